//! Read-index at a follower: reads asked of a follower go to the leader it knows in one
//! `ReadIndex` request per ready; the leader confirms the request like its own reads (the
//! slot taken when the request arrives, a quorum echoing a read round sent after it) and
//! answers with `ReadIndexReply`. The follower serves nothing itself: it reports the leader's
//! slot, and the application serves the read once this replica has applied that slot.
//!
//! Why it is linearizable: every read a request answers was asked before the request was
//! sent; the leader's slot covers every write acknowledged before the request arrived, and
//! the quorum's echo shows the leader still led after that. A reply also answers the same
//! leader's earlier requests from this follower (their reads were asked earlier still).

use super::{PendingRead, RemoteRead, Replica, Role};
use crate::error::ReadError;
use crate::message::Body;
use crate::replica::Event;
use crate::types::{NodeId, Slot};

impl Replica {
    /// [`Replica::read_index`] on a replica that does not lead.
    pub(super) fn read_index_at_follower(&mut self, context: u64) -> Result<(), ReadError> {
        match self.leader {
            Some(leader)
                if self.config.forward_reads
                    && leader != self.config.id
                    && self.role == Role::Follower => {}
            hint => return Err(ReadError::NotLeader { hint }),
        }
        // Requests are numbered within the incarnation: it must be durable first, or a reply
        // to the last life's request could answer this one's.
        if !self.incarnation_durable || self.remote_reads.len() >= self.config.reads_max {
            return Err(ReadError::Busy);
        }
        self.remote_reads.push_back(RemoteRead {
            context,
            sent: None,
            asked: self.now,
        });
        Ok(())
    }

    /// True if reads were asked of this follower since its last request.
    #[inline]
    pub(super) fn remote_reads_unsent(&self) -> bool {
        self.remote_reads
            .back()
            .is_some_and(|read| read.sent.is_none())
    }

    /// Sends the reads asked since the last request to the leader, in one request; aborts
    /// them if there is no leader to ask any more.
    pub(super) fn send_remote_reads(&mut self) {
        match self.leader {
            Some(leader) if leader != self.config.id && self.role == Role::Follower => {
                self.remote_round += 1;
                let round = self.remote_round;
                for read in self.remote_reads.iter_mut().rev() {
                    if read.sent.is_some() {
                        break;
                    }
                    read.sent = Some((leader, round));
                }
                let incarnation = self.hard.incarnation;
                self.send(leader, Body::ReadIndex { incarnation, round });
            }
            _ => {
                let unsent = self
                    .remote_reads
                    .iter()
                    .rposition(|read| read.sent.is_some())
                    .map_or(0, |last_sent| last_sent + 1);
                for read in self.remote_reads.drain(unsent..) {
                    self.events.push(Event::ReadAborted {
                        context: read.context,
                    });
                }
            }
        }
    }

    /// Aborts the reads whose leader has not answered within `election_ticks`.
    pub(super) fn expire_remote_reads(&mut self) {
        let deadline = u64::from(self.config.election_ticks);
        let now = self.now;
        let events = &mut self.events;
        self.remote_reads.retain(|read| {
            let expired = read.sent.is_some() && now - read.asked >= deadline;
            if expired {
                events.push(Event::ReadAborted {
                    context: read.context,
                });
            }
            !expired
        });
    }

    /// At a leader: takes the slot for `read` (its `slot` and `round` are set here) and
    /// answers it at once if nobody else can lead (a single member, or a lease), or queues it
    /// for the next read round. False if `reads_max` reads wait already (or, for a caller
    /// that did not check, this replica does not lead).
    pub(super) fn confirm_read(&mut self, mut read: PendingRead) -> bool {
        let Some(leadership) = self.leadership.as_mut() else {
            return false;
        };
        // A leader whose phase 1 stopped at a recovered change knows nothing of the slots
        // after it: a majority of the change's membership may have chosen values there (and
        // its own majority confirming its ballot says nothing about them). It leads only
        // until the change is chosen, then campaigns again.
        if leadership.reads.len() >= self.config.reads_max || leadership.phase_one_stopped {
            return false;
        }
        read.slot = self.hard.chosen.max(leadership.read_floor);
        read.round = leadership.read_round + 1;
        // The only voter (learners do not count): nobody can have promised a higher ballot.
        // Under a lease, no other leader can have been elected since the lease's round was
        // sent.
        let only_voter = self.voters.len() == 1;
        let at_once = only_voter || self.holds_lease();
        if at_once {
            if !only_voter {
                self.lease_reads += 1;
            }
            self.answer_read(read.context, read.from, Some(read.slot));
        } else {
            let leadership = self.leadership.as_mut().expect("checked above");
            leadership.reads.push_back(read);
            leadership.read_round_wanted = true;
        }
        true
    }

    /// Answers a read confirmed (`Some(slot)`) or given up (`None`): an event for a read
    /// asked here, a `ReadIndexReply` for a follower's request.
    pub(super) fn answer_read(
        &mut self,
        context: u64,
        from: Option<(NodeId, u64)>,
        slot: Option<Slot>,
    ) {
        match (from, slot) {
            (None, Some(slot)) => self.events.push(Event::ReadReady { context, slot }),
            (None, None) => self.events.push(Event::ReadAborted { context }),
            (Some((to, incarnation)), slot) => self.send(
                to,
                Body::ReadIndexReply {
                    incarnation,
                    round: context,
                    slot,
                },
            ),
        }
    }

    /// A follower's read request arrives: a leader confirms it like a read of its own and
    /// answers when a quorum has echoed; anyone else refuses at once.
    pub(super) fn on_read_index(&mut self, from: NodeId, incarnation: u64, round: u64) {
        let from = Some((from, incarnation));
        let read = PendingRead {
            context: round,
            from,
            slot: 0,
            round: 0,
        };
        if !self.confirm_read(read) {
            self.dropped_messages += 1;
            self.answer_read(round, from, None);
        }
    }

    /// The leader asked answers: every read sent to it in this request or an earlier one is
    /// ready (or aborted, if it refused).
    pub(super) fn on_read_index_reply(
        &mut self,
        from: NodeId,
        incarnation: u64,
        round: u64,
        slot: Option<Slot>,
    ) {
        if incarnation != self.hard.incarnation {
            return; // an answer to this replica's previous life
        }
        let events = &mut self.events;
        self.remote_reads.retain(|read| {
            let answered = read
                .sent
                .is_some_and(|(leader, sent)| leader == from && sent <= round);
            if answered {
                let context = read.context;
                events.push(match slot {
                    Some(slot) => Event::ReadReady { context, slot },
                    None => Event::ReadAborted { context },
                });
            }
            !answered
        });
    }
}
