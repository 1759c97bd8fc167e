//! Drives a 2PC coordinator and a participant with an arbitrary history decoded from the
//! input: messages of every kind from known and unknown nodes, about a few transactions,
//! begins, ticks, votes, and the decision log's answers. Neither machine may panic, and:
//! - every Decision the coordinator sends agrees with its decision log;
//! - the participant reports a commit only for a transaction it voted yes on.
//!
//! Transaction ids are not reused (the module requires it): begins take fresh ids, and
//! messages name one of the four newest.
//!
//! Run from the repository root:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run twopc -- -max_total_time=60`
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use synod::twopc::{
    Body, Coordinator, CoordinatorConfig, DecisionLog, Message, Outcome, Participant,
    ParticipantConfig, ParticipantEvent, TxnId,
};
use synod::NodeId;

const C: NodeId = NodeId(100);
const P: NodeId = NodeId(1);

fuzz_target!(|data: &[u8]| {
    let mut config = CoordinatorConfig::new(C);
    config.txns_max = 4;
    config.vote_ticks = 5;
    config.resend_ticks = 2;
    let mut coordinator = Coordinator::new(config).unwrap();
    let mut config = ParticipantConfig::new(P);
    config.txns_max = 3;
    config.payload_bytes_max = 4;
    config.finished_remembered = 2;
    let mut participant = Participant::new(config).unwrap();
    let mut log = DecisionLog::new();
    let mut pending = Vec::new();
    let mut voted_yes = BTreeSet::new();
    let mut next_txn = 4u64;
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        let (&arg, rest) = rest.split_first().unwrap_or((&0, &[]));
        input = rest;
        let txn = TxnId(next_txn - u64::from(arg & 3));
        let node = [C, P, NodeId(2), NodeId(7)][usize::from(arg >> 2 & 3)];
        let body = match arg >> 4 & 7 {
            0 => Body::VoteRequest {
                payload: Bytes::from(vec![0; usize::from(op & 7)]),
            },
            1 => Body::Vote { yes: true },
            2 => Body::Vote { yes: false },
            3 => Body::Decision {
                outcome: Outcome::Commit,
            },
            4 => Body::Decision {
                outcome: Outcome::Abort,
            },
            5 => Body::DecisionAck,
            _ => Body::StatusQuery,
        };
        match op % 8 {
            0 => {
                let _ = coordinator.step(Message {
                    txn,
                    from: node,
                    to: C,
                    body,
                });
            }
            1 => {
                let _ = participant.step(Message {
                    txn,
                    from: node,
                    to: P,
                    body,
                });
            }
            2 => {
                let parts = if arg & 0x80 != 0 {
                    vec![(P, Bytes::from_static(b"a")), (NodeId(2), Bytes::new())]
                } else {
                    vec![(P, Bytes::from_static(b"b"))]
                };
                next_txn += 1;
                let _ = coordinator.begin(TxnId(next_txn), parts);
            }
            3 => coordinator.tick(),
            4 => participant.tick(),
            5 => {
                let yes = arg & 0x80 != 0;
                if participant.vote(txn, yes).is_ok() && yes {
                    voted_yes.insert(txn);
                }
            }
            6 => {
                if !pending.is_empty() {
                    let entry = pending.remove(0);
                    if let Some((txn, decided)) = log.apply(&entry) {
                        coordinator.on_logged(txn, &decided);
                    }
                }
            }
            _ => {
                let _ = coordinator.abort(txn);
            }
        }
        if coordinator.has_ready() {
            let mut ready = coordinator.ready();
            pending.extend(ready.take_log());
            for message in ready.take_messages() {
                if let Body::Decision { outcome } = message.body {
                    assert_eq!(log.outcome(message.txn), Some(outcome), "{message:?}");
                }
            }
            ready.take_events();
        }
        if participant.has_ready() {
            let mut ready = participant.ready();
            ready.take_messages();
            ready.take_records();
            ready.take_persisted_messages();
            for event in ready.take_events() {
                if let ParticipantEvent::Decided { txn, outcome, .. } = event {
                    if outcome == Outcome::Commit {
                        assert!(voted_yes.contains(&txn), "{txn} committed without a yes");
                    }
                }
            }
        }
    }
});
