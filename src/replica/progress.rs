//! What the leader knows about each follower: the flow-control window and liveness.

use crate::types::Slot;
use std::collections::VecDeque;

/// One Accept sent and not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Inflight {
    /// First slot of the Accept.
    pub(crate) first_slot: Slot,
    /// Last slot of the Accept.
    pub(crate) last_slot: Slot,
    /// Payload bytes it carried.
    pub(crate) bytes: usize,
    /// The tick it was (last) sent at.
    pub(crate) sent_tick: u64,
}

/// The leader's view of one follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Progress {
    /// The next slot to send in a fresh Accept. Slots below it were sent at least once.
    pub(crate) next_slot: Slot,
    /// Accepts sent and not yet acknowledged, oldest first. Bounded by `inflight_msgs_max`.
    pub(crate) inflight: VecDeque<Inflight>,
    /// Sum of `inflight[..].bytes`. Bounded by `inflight_bytes_max` (one Accept may pass it).
    pub(crate) inflight_bytes: usize,
    /// The chosen mark last sent to this follower.
    pub(crate) sent_chosen: Slot,
    /// The tick of the last message heard from this follower for the current ballot.
    pub(crate) heard_tick: u64,
    /// The follower's chosen mark, as last reported.
    pub(crate) follower_chosen: Slot,
}

impl Progress {
    pub(crate) fn new(next_slot: Slot, now: u64) -> Progress {
        Progress {
            next_slot,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            sent_chosen: 0,
            heard_tick: now,
            follower_chosen: 0,
        }
    }

    /// True if the follower's chosen mark is below `first_slot - 1`, the leader's compaction
    /// point: its phase 1 would need slots the leader (and likely the others) discarded, so it
    /// cannot take over before a snapshot brings it past them.
    pub(crate) fn behind_compaction(&self, first_slot: Slot) -> bool {
        self.follower_chosen + 1 < first_slot
    }

    /// True if another Accept fits in the window.
    pub(crate) fn has_room(&self, inflight_msgs_max: usize, inflight_bytes_max: usize) -> bool {
        self.inflight.len() < inflight_msgs_max && self.inflight_bytes < inflight_bytes_max
    }

    pub(crate) fn push(&mut self, inflight: Inflight) {
        self.inflight_bytes += inflight.bytes;
        self.inflight.push_back(inflight);
    }

    /// Frees the window slot of the Accept ending at `last_slot`, if any (Accepts to one
    /// follower never overlap, and a retransmission may start later than the original, past
    /// slots chosen since). Acknowledgements normally arrive in order, so the search almost
    /// always stops at once.
    pub(crate) fn acknowledge(&mut self, last_slot: Slot) {
        let found = self
            .inflight
            .iter()
            .position(|sent| sent.last_slot == last_slot);
        if let Some(index) = found {
            let sent = self.inflight.remove(index).expect("index is in range");
            self.inflight_bytes -= sent.bytes;
        }
    }

    /// Forgets Accepts whose slots are all at or below `chosen`: the follower will learn those
    /// slots from the chosen mark (and fetch them if it lacks them).
    pub(crate) fn forget_chosen(&mut self, chosen: Slot) {
        while let Some(front) = self.inflight.front() {
            if front.last_slot > chosen {
                break;
            }
            self.inflight_bytes -= front.bytes;
            self.inflight.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(first_slot: Slot, last_slot: Slot) -> Inflight {
        Inflight {
            first_slot,
            last_slot,
            bytes: 10,
            sent_tick: 0,
        }
    }

    #[test]
    fn window_frees_on_acknowledgement_in_any_order() {
        let mut progress = Progress::new(1, 0);
        progress.push(sent(1, 2));
        progress.push(sent(3, 4));
        progress.push(sent(5, 5));
        assert!(!progress.has_room(3, 1000));
        progress.acknowledge(4);
        assert_eq!(progress.inflight_bytes, 20);
        progress.acknowledge(4); // a duplicate changes nothing
        assert_eq!(progress.inflight.len(), 2);
        progress.forget_chosen(2);
        assert_eq!(progress.inflight.len(), 1);
        assert_eq!(progress.inflight_bytes, 10);
        assert!(progress.has_room(3, 1000));
    }
}
