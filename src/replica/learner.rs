//! The learner: advancing the chosen mark and fetching chosen values this replica lacks.

use super::{Event, Replica, Role};
use crate::message::Body;
use crate::types::{Ballot, Entry, NodeId, Slot};

impl Replica {
    /// The leader of `ballot` says every slot up to `chosen` is chosen. A local entry accepted in
    /// that same ballot holds the value that ballot proposed, hence the chosen one; any other
    /// slot must be fetched.
    pub(super) fn learn_chosen(&mut self, ballot: Ballot, chosen: Slot) {
        self.leader_chosen = self.leader_chosen.max(chosen);
        let mut mark = self.hard.chosen;
        while mark < chosen {
            match self.log.get(mark + 1) {
                Some(entry) if entry.ballot == ballot => mark += 1,
                _ => break,
            }
        }
        self.set_chosen(mark);
        if self.hard.chosen < self.leader_chosen && self.fetch_sent_tick.is_none() {
            self.send_fetch();
        }
    }

    fn send_fetch(&mut self) {
        let Some(leader) = self.leader.filter(|leader| *leader != self.config.id) else {
            return;
        };
        self.fetch_sent_tick = Some(self.now);
        let (ballot, first_slot) = (self.leader_ballot, self.hard.chosen + 1);
        self.send(leader, Body::Fetch { ballot, first_slot });
    }

    /// Retransmits a Fetch that got no answer.
    pub(super) fn retry_fetch(&mut self) {
        if self.hard.chosen >= self.leader_chosen {
            self.fetch_sent_tick = None;
            return;
        }
        let stale = match self.fetch_sent_tick {
            Some(sent) => self.now - sent >= u64::from(self.config.retransmit_ticks),
            None => true,
        };
        if stale {
            self.send_fetch();
        }
    }

    /// Serves chosen entries from `first_slot` on, up to `fetch_bytes_max`. Any replica serves
    /// what it knows chosen.
    pub(super) fn on_fetch(&mut self, from: NodeId, first_slot: Slot) {
        let first_slot = first_slot.max(1);
        if first_slot > self.hard.chosen {
            return;
        }
        if first_slot < self.log.first() {
            self.events.push(Event::SnapshotNeeded { follower: from });
            return;
        }
        let mut bytes = 0;
        let mut entries = Vec::new();
        for entry in self.log.range(first_slot, self.hard.chosen) {
            if !entries.is_empty() && bytes + entry.value.size_bytes() > self.config.fetch_bytes_max
            {
                break;
            }
            bytes += entry.value.size_bytes();
            entries.push(entry.clone());
        }
        let (ballot, chosen) = (self.hard.promised, self.hard.chosen);
        self.send(
            from,
            Body::FetchReply {
                ballot,
                entries,
                chosen,
            },
        );
    }

    /// Stores fetched chosen values that extend the chosen prefix.
    pub(super) fn on_fetch_reply(&mut self, _from: NodeId, entries: Vec<Entry>, chosen: Slot) {
        if self.role != Role::Follower {
            return; // a leader's vote window is aligned with its chosen mark; never move it here
        }
        self.fetch_sent_tick = None;
        self.leader_chosen = self.leader_chosen.max(chosen);
        for entry in entries {
            if entry.slot <= self.hard.chosen || entry.slot > chosen {
                continue;
            }
            if entry.slot != self.hard.chosen + 1 {
                break;
            }
            let slot = entry.slot;
            if self.log.get(slot) != Some(&entry) {
                self.store(entry);
            }
            self.set_chosen(slot);
        }
        if self.hard.chosen < self.leader_chosen {
            self.send_fetch();
        }
    }
}
