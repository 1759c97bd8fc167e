//! Each rule of the two machines, one test at a time.

use super::*;

const C: NodeId = NodeId(100);
const P: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn coordinator() -> Coordinator {
    Coordinator::new(CoordinatorConfig::new(C)).unwrap()
}

fn participant(id: NodeId) -> Participant {
    Participant::new(ParticipantConfig::new(id)).unwrap()
}

fn parts(ids: &[NodeId]) -> Vec<(NodeId, Bytes)> {
    ids.iter()
        .map(|id| (*id, Bytes::from(format!("part of {id}"))))
        .collect()
}

/// Logs a coordinator's ready to `log` and returns its messages and the logged decisions'
/// answers (not yet reported).
fn drain(coordinator: &mut Coordinator, log: &mut DecisionLog) -> (Vec<Message>, Vec<TxnId>) {
    let mut ready = coordinator.ready();
    let mut decided = Vec::new();
    for entry in ready.take_log() {
        if let Some((txn, _)) = log.apply(&entry) {
            decided.push(txn);
        }
    }
    (ready.take_messages(), decided)
}

fn report(coordinator: &mut Coordinator, log: &DecisionLog, txns: &[TxnId]) {
    for txn in txns {
        coordinator.on_logged(*txn, log.get(*txn).expect("logged"));
    }
}

fn to(messages: &[Message], node: NodeId) -> Vec<Message> {
    messages.iter().filter(|m| m.to == node).cloned().collect()
}

#[test]
fn all_yes_commits_and_the_decision_is_logged_before_anyone_hears_it() {
    let mut coordinator = coordinator();
    let mut log = DecisionLog::new();
    let mut participants: Vec<Participant> = P.iter().map(|id| participant(*id)).collect();
    let txn = TxnId(7);
    coordinator.begin(txn, parts(&P)).unwrap();
    let (requests, decided) = drain(&mut coordinator, &mut log);
    assert!(decided.is_empty());
    assert_eq!(requests.len(), 3);
    let mut votes = Vec::new();
    for (participant, request) in participants.iter_mut().zip(requests) {
        participant.step(request).unwrap();
        let mut ready = participant.ready();
        let events = ready.take_events();
        assert!(
            matches!(&events[..], [ParticipantEvent::VoteRequested { txn: t, .. }] if *t == txn)
        );
        participant.vote(txn, true).unwrap();
        // The yes vote waits for the durable prepared record.
        let mut ready = participant.ready();
        assert!(ready.take_messages().is_empty());
        assert!(ready.must_sync());
        assert!(matches!(
            &ready.take_records()[..],
            [ParticipantRecord::Prepared { txn: t, coordinator: c, .. }] if *t == txn && *c == C
        ));
        votes.extend(ready.take_persisted_messages());
    }
    for vote in votes {
        coordinator.step(vote).unwrap();
    }
    // All yes: a Decide entry, and not one Decision message yet.
    let (messages, decided) = drain(&mut coordinator, &mut log);
    assert!(messages.is_empty());
    assert_eq!(decided, [txn]);
    assert_eq!(log.get(txn).unwrap().outcome, Outcome::Commit);
    report(&mut coordinator, &log, &decided);
    let mut ready = coordinator.ready();
    assert_eq!(
        ready.take_events(),
        [CoordinatorEvent::Decided {
            txn,
            outcome: Outcome::Commit
        }]
    );
    let decisions = ready.take_messages();
    assert_eq!(decisions.len(), 3);
    let mut acks = Vec::new();
    for participant in &mut participants {
        let id = participant.config().id;
        participant.step(to(&decisions, id).remove(0)).unwrap();
        let mut ready = participant.ready();
        assert!(ready.must_sync());
        assert_eq!(
            ready.take_records(),
            [ParticipantRecord::Finished {
                txn,
                coordinator: C,
                outcome: Outcome::Commit
            }]
        );
        assert!(matches!(
            &ready.take_events()[..],
            [ParticipantEvent::Decided { outcome: Outcome::Commit, payload, .. }]
                if payload[..] == *format!("part of {id}").as_bytes()
        ));
        acks.extend(ready.take_persisted_messages());
        assert_eq!(participant.prepared().count(), 0);
    }
    for ack in acks {
        assert_eq!(coordinator.in_flight(), 1);
        coordinator.step(ack).unwrap();
    }
    assert_eq!(coordinator.in_flight(), 0);
    assert!(coordinator.has_ready(), "a Forget entry alone is work");
    drain(&mut coordinator, &mut log);
    assert!(
        log.is_empty(),
        "forgotten once every participant acknowledged"
    );
}

/// Runs `txn` with `votes` (one per participant, None: silent) up to the coordinator's
/// decision; returns the participants and the decision messages.
fn vote_and_decide(
    coordinator: &mut Coordinator,
    log: &mut DecisionLog,
    txn: TxnId,
    votes: [Option<bool>; 3],
) -> (Vec<Participant>, Vec<Message>) {
    let mut participants: Vec<Participant> = P.iter().map(|id| participant(*id)).collect();
    coordinator.begin(txn, parts(&P)).unwrap();
    let (requests, _) = drain(coordinator, log);
    for ((participant, request), vote) in participants.iter_mut().zip(requests).zip(votes) {
        participant.step(request).unwrap();
        participant.ready();
        if let Some(yes) = vote {
            participant.vote(txn, yes).unwrap();
            let mut ready = participant.ready();
            for message in ready
                .take_messages()
                .into_iter()
                .chain(ready.take_persisted_messages())
            {
                coordinator.step(message).unwrap();
            }
        }
    }
    let (_, decided) = drain(coordinator, log);
    report(coordinator, log, &decided);
    let mut ready = coordinator.ready();
    for entry in ready.take_log() {
        log.apply(&entry);
    }
    (participants, ready.take_messages())
}

#[test]
fn one_no_vote_aborts_and_aborts_are_neither_synced_nor_acknowledged() {
    let mut coordinator = coordinator();
    let mut log = DecisionLog::new();
    let txn = TxnId(1);
    let (mut participants, decisions) = vote_and_decide(
        &mut coordinator,
        &mut log,
        txn,
        [Some(true), Some(false), None],
    );
    assert!(decisions.iter().all(|m| m.body
        == Body::Decision {
            outcome: Outcome::Abort
        }));
    // Presumed abort: forgotten at once, here and in the log.
    assert_eq!(coordinator.in_flight(), 0);
    assert!(log.is_empty());
    // The prepared participant aborts without a sync or an ack; the asked one releases.
    participants[0]
        .step(to(&decisions, P[0]).remove(0))
        .unwrap();
    let mut ready = participants[0].ready();
    assert!(!ready.must_sync());
    assert!(ready.take_persisted_messages().is_empty());
    assert!(matches!(
        &ready.take_events()[..],
        [ParticipantEvent::Decided {
            outcome: Outcome::Abort,
            ..
        }]
    ));
    participants[2]
        .step(to(&decisions, P[2]).remove(0))
        .unwrap();
    assert!(matches!(
        &participants[2].ready().take_events()[..],
        [ParticipantEvent::Decided {
            outcome: Outcome::Abort,
            ..
        }]
    ));
    assert!(participants[2].vote(txn, true).is_err(), "too late to vote");
}

#[test]
fn silent_participants_are_asked_again_then_the_vote_times_out() {
    let mut config = CoordinatorConfig::new(C);
    config.vote_ticks = 25;
    config.resend_ticks = 10;
    let mut coordinator = Coordinator::new(config).unwrap();
    let mut log = DecisionLog::new();
    let txn = TxnId(3);
    let (_, decisions) = vote_and_decide(&mut coordinator, &mut log, txn, [Some(true), None, None]);
    assert!(decisions.is_empty());
    let mut resent = Vec::new();
    for _ in 0..24 {
        coordinator.tick();
        resent.extend(coordinator.ready().take_messages());
    }
    // Two resends, to the two silent participants only.
    assert_eq!(resent.len(), 4);
    assert!(resent
        .iter()
        .all(|m| m.to != P[0] && matches!(m.body, Body::VoteRequest { .. })));
    coordinator.tick();
    let (messages, decided) = drain(&mut coordinator, &mut log);
    assert!(messages.is_empty());
    assert_eq!(decided, [txn]);
    assert_eq!(log.get(txn).unwrap().outcome, Outcome::Abort);
}

#[test]
fn a_prepared_participant_stays_prepared_across_a_crash_and_asks() {
    let mut coordinator = coordinator();
    let mut log = DecisionLog::new();
    let txn = TxnId(9);
    let (participants, decisions) =
        vote_and_decide(&mut coordinator, &mut log, txn, [Some(true); 3]);
    assert_eq!(decisions.len(), 3);
    // Participant 1 crashed before it got the decision; it kept its prepared record.
    let record = ParticipantRecord::Prepared {
        txn,
        coordinator: C,
        payload: Bytes::from("part of n1"),
    };
    drop(participants);
    let mut config = ParticipantConfig::new(P[0]);
    config.query_ticks = 5;
    let mut restarted = Participant::recover(config, [record]).unwrap();
    assert_eq!(restarted.prepared().collect::<Vec<_>>(), [txn]);
    assert!(
        restarted.vote(txn, false).is_err(),
        "prepared: bound by the decision"
    );
    let queries = restarted.ready().take_messages();
    assert_eq!(
        queries,
        [Message {
            txn,
            from: P[0],
            to: C,
            body: Body::StatusQuery
        }]
    );
    // Asks again every query_ticks.
    for _ in 0..5 {
        restarted.tick();
    }
    assert_eq!(restarted.ready().take_messages().len(), 1);
    // The coordinator answers with the logged commit.
    coordinator.step(queries[0].clone()).unwrap();
    let answer = coordinator.ready().take_messages();
    assert_eq!(
        answer[0].body,
        Body::Decision {
            outcome: Outcome::Commit
        }
    );
    restarted.step(answer[0].clone()).unwrap();
    assert!(matches!(
        &restarted.ready().take_events()[..],
        [ParticipantEvent::Decided {
            outcome: Outcome::Commit,
            ..
        }]
    ));
}

#[test]
fn a_recovered_coordinator_announces_what_the_log_holds() {
    let mut coordinator = coordinator();
    let mut log = DecisionLog::new();
    let (_, decisions) = vote_and_decide(&mut coordinator, &mut log, TxnId(1), [Some(true); 3]);
    assert_eq!(decisions.len(), 3);
    log.apply(&LogEntry::Decide {
        txn: TxnId(2),
        outcome: Outcome::Abort,
        participants: vec![P[1]],
    });
    drop(coordinator);
    let mut recovered = Coordinator::recover(CoordinatorConfig::new(C), &log).unwrap();
    let mut ready = recovered.ready();
    let messages = ready.take_messages();
    assert_eq!(messages.len(), 4);
    assert_eq!(
        ready.take_events(),
        [
            CoordinatorEvent::Decided {
                txn: TxnId(1),
                outcome: Outcome::Commit
            },
            CoordinatorEvent::Decided {
                txn: TxnId(2),
                outcome: Outcome::Abort
            }
        ]
    );
    assert_eq!(ready.take_log(), [LogEntry::Forget { txn: TxnId(2) }]);
    // The commit is resent until acknowledged.
    for _ in 0..10 {
        recovered.tick();
    }
    assert_eq!(recovered.ready().take_messages().len(), 3);
    for participant in P {
        recovered
            .step(Message {
                txn: TxnId(1),
                from: participant,
                to: C,
                body: Body::DecisionAck,
            })
            .unwrap();
    }
    assert_eq!(recovered.in_flight(), 0);
}

#[test]
fn an_unknown_transaction_is_aborted_but_only_through_the_log() {
    let mut log = DecisionLog::new();
    // Another coordinator already logged a commit that this one has not applied yet.
    let mut coordinator = coordinator();
    let query = |txn| Message {
        txn,
        from: P[0],
        to: C,
        body: Body::StatusQuery,
    };
    coordinator.step(query(TxnId(5))).unwrap();
    let mut ready = coordinator.ready();
    assert!(
        ready.take_messages().is_empty(),
        "no answer before the log's"
    );
    let entries = ready.take_log();
    assert_eq!(
        entries,
        [LogEntry::Decide {
            txn: TxnId(5),
            outcome: Outcome::Abort,
            participants: vec![P[0]]
        }]
    );
    // The log already held a commit for it: the first writer wins, and that is the answer.
    log.apply(&LogEntry::Decide {
        txn: TxnId(5),
        outcome: Outcome::Commit,
        participants: P.to_vec(),
    });
    assert_eq!(log.apply(&entries[0]).unwrap().1.outcome, Outcome::Commit);
    coordinator.on_logged(TxnId(5), log.get(TxnId(5)).unwrap());
    let answers = coordinator.ready().take_messages();
    assert_eq!(answers.len(), 3, "every participant the log names");
    assert!(answers.iter().all(|m| m.body
        == Body::Decision {
            outcome: Outcome::Commit
        }));
    // With nothing in the log, the abort is the answer; a late yes vote is treated alike.
    let mut coordinator = self::coordinator();
    let mut log = DecisionLog::new();
    coordinator
        .step(Message {
            body: Body::Vote { yes: true },
            ..query(TxnId(6))
        })
        .unwrap();
    let (messages, decided) = drain(&mut coordinator, &mut log);
    assert!(messages.is_empty());
    report(&mut coordinator, &log, &decided);
    assert_eq!(
        coordinator.ready().take_messages(),
        [Message {
            txn: TxnId(6),
            from: C,
            to: P[0],
            body: Body::Decision {
                outcome: Outcome::Abort
            }
        }]
    );
    // Late no votes and acks of unknown transactions are ignored.
    for body in [Body::Vote { yes: false }, Body::DecisionAck] {
        coordinator
            .step(Message {
                body,
                ..query(TxnId(8))
            })
            .unwrap();
    }
    assert!(!coordinator.has_ready());
}

#[test]
fn the_decision_log_keeps_the_first_decision_and_round_trips() {
    let mut log = DecisionLog::new();
    let decide = |outcome| LogEntry::Decide {
        txn: TxnId(1),
        outcome,
        participants: vec![P[0]],
    };
    let outcome = |answer: Option<(TxnId, Decided)>| answer.map(|(txn, d)| (txn, d.outcome));
    let first = Some((TxnId(1), Outcome::Abort));
    assert_eq!(outcome(log.apply(&decide(Outcome::Abort))), first);
    assert_eq!(outcome(log.apply(&decide(Outcome::Commit))), first);
    assert_eq!(log.len(), 1);
    assert!(!log.is_empty());
    assert_eq!(log.apply(&LogEntry::Forget { txn: TxnId(1) }), None);
    assert!(log.is_empty());
    assert_eq!(log.len(), 0);
    assert_eq!(TxnId(1).to_string(), "t1");
    // Forgotten, but remembered as finished: a late Decide gets the old outcome.
    assert_eq!(log.outcome(TxnId(1)), Some(Outcome::Abort));
    assert_eq!(outcome(log.apply(&decide(Outcome::Commit))), first);
    assert!(log.is_empty() && log.get(TxnId(1)).is_none());
    // The memory of finished transactions is bounded, oldest dropped first.
    for txn in 2..(DecisionLog::FINISHED_MAX as u64 + 3) {
        log.apply(&LogEntry::Decide {
            txn: TxnId(txn),
            outcome: Outcome::Commit,
            participants: vec![],
        });
        log.apply(&LogEntry::Forget { txn: TxnId(txn) });
    }
    assert_eq!(log.outcome(TxnId(1)), None);
    assert_eq!(log.outcome(TxnId(2)), None);
    assert_eq!(log.outcome(TxnId(3)), Some(Outcome::Commit));
    for entry in [decide(Outcome::Commit), LogEntry::Forget { txn: TxnId(4) }] {
        assert_eq!(LogEntry::decode(&entry.encode()), Ok(entry));
    }
    assert!(LogEntry::decode(&[0xff; 3]).is_err());
    let mut trailing = decide(Outcome::Commit).encode();
    trailing.push(1);
    assert!(LogEntry::decode(&trailing).is_err());
    assert!(LogEntry::decode(&vec![0; LogEntry::BYTES_MAX + 1]).is_err());
}

#[test]
fn the_decision_log_answers_abort_at_or_below_its_floor_and_records_nothing() {
    assert_eq!(DecisionLog::new().finished_max(), DecisionLog::FINISHED_MAX);
    assert_eq!(DecisionLog::new(), DecisionLog::default());
    let mut log = DecisionLog::with_finished_max(1);
    assert_eq!(log.finished_max(), 1);
    let decide = |txn, outcome| LogEntry::Decide {
        txn: TxnId(txn),
        outcome,
        participants: vec![P[0]],
    };
    let answer = |log: &mut DecisionLog, entry: &LogEntry| log.apply(entry).unwrap().1.outcome;
    // t5 stays live (a commit still being announced) while t1..t3 are decided and forgotten.
    assert_eq!(
        answer(&mut log, &decide(5, Outcome::Commit)),
        Outcome::Commit
    );
    for (txn, outcome) in [
        (1, Outcome::Commit),
        (2, Outcome::Abort),
        (3, Outcome::Commit),
    ] {
        let floor = if txn > 2 { Some(TxnId(txn - 2)) } else { None };
        assert_eq!(log.floor(), floor);
        assert_eq!(answer(&mut log, &decide(txn, outcome)), outcome);
        log.apply(&LogEntry::Forget { txn: TxnId(txn) });
    }
    assert_eq!(log.floor(), Some(TxnId(2)));
    assert_eq!(log.outcome(TxnId(3)), Some(Outcome::Commit), "remembered");
    for txn in [1, 2] {
        assert_eq!(log.outcome(TxnId(txn)), None, "forgotten");
        // A late decision either way: abort, and the log still holds nothing about it.
        for outcome in [Outcome::Commit, Outcome::Abort] {
            assert_eq!(answer(&mut log, &decide(txn, outcome)), Outcome::Abort);
            assert_eq!(log.outcome(TxnId(txn)), None);
        }
    }
    // Remembered and live decisions are answered as before, floor or not.
    assert_eq!(
        answer(&mut log, &decide(3, Outcome::Abort)),
        Outcome::Commit
    );
    assert_eq!(
        answer(&mut log, &decide(5, Outcome::Abort)),
        Outcome::Commit
    );
    // Above the floor: a new decision, recorded.
    assert_eq!(answer(&mut log, &decide(4, Outcome::Abort)), Outcome::Abort);
    assert_eq!(log.outcome(TxnId(4)), Some(Outcome::Abort));
    assert_eq!(log.len(), 2);
    // Nothing remembered at all: every Forget raises the floor at once.
    let mut log = DecisionLog::with_finished_max(0);
    assert_eq!(
        answer(&mut log, &decide(9, Outcome::Commit)),
        Outcome::Commit
    );
    log.apply(&LogEntry::Forget { txn: TxnId(9) });
    assert_eq!((log.floor(), log.outcome(TxnId(9))), (Some(TxnId(9)), None));
    assert_eq!(
        answer(&mut log, &decide(9, Outcome::Commit)),
        Outcome::Abort
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut coordinator = coordinator();
    coordinator.begin(TxnId(1), parts(&P[..2])).unwrap();
    coordinator.ready();
    let message = |from, to, body| Message {
        txn: TxnId(1),
        from,
        to,
        body,
    };
    assert!(matches!(
        coordinator.step(message(P[0], NodeId(5), Body::Vote { yes: true })),
        Err(StepError::WrongRecipient { .. })
    ));
    assert!(matches!(
        coordinator.step(message(P[2], C, Body::Vote { yes: true })),
        Err(StepError::Unexpected { kind: "Vote", .. })
    ));
    assert!(matches!(
        coordinator.step(message(
            P[0],
            C,
            Body::VoteRequest {
                payload: Bytes::new()
            }
        )),
        Err(StepError::Unexpected { .. })
    ));
    assert!(!coordinator.has_ready());
    assert_eq!(
        coordinator.begin(TxnId(1), parts(&P)),
        Err(BeginError::Duplicate(TxnId(1)))
    );
    assert_eq!(
        coordinator.begin(TxnId(2), vec![]),
        Err(BeginError::BadParticipants)
    );
    assert_eq!(
        coordinator.begin(TxnId(2), parts(&[P[0], P[0]])),
        Err(BeginError::BadParticipants)
    );
    let mut config = CoordinatorConfig::new(C);
    config.txns_max = 1;
    let mut small = Coordinator::new(config).unwrap();
    small.begin(TxnId(1), parts(&P)).unwrap();
    assert_eq!(
        small.begin(TxnId(2), parts(&P)),
        Err(BeginError::TooManyTxns { max: 1 })
    );
    assert!(matches!(
        small.step(message(P[0], C, Body::StatusQuery).with_txn(TxnId(9))),
        Err(StepError::TooManyTxns { max: 1 })
    ));
    assert!(Coordinator::new(CoordinatorConfig {
        vote_ticks: 0,
        ..CoordinatorConfig::new(C)
    })
    .is_err());

    let mut config = ParticipantConfig::new(P[0]);
    config.payload_bytes_max = 4;
    config.txns_max = 1;
    let mut participant = Participant::new(config).unwrap();
    assert!(matches!(
        participant.step(message(
            C,
            P[0],
            Body::VoteRequest {
                payload: Bytes::from("12345")
            }
        )),
        Err(StepError::PayloadTooLarge { bytes: 5, max: 4 })
    ));
    participant
        .step(message(
            C,
            P[0],
            Body::VoteRequest {
                payload: Bytes::from("1"),
            },
        ))
        .unwrap();
    assert!(matches!(
        participant.step(
            message(
                C,
                P[0],
                Body::VoteRequest {
                    payload: Bytes::from("1")
                }
            )
            .with_txn(TxnId(2))
        ),
        Err(StepError::TooManyTxns { max: 1 })
    ));
    assert!(matches!(
        participant.step(message(
            C,
            P[0],
            Body::Decision {
                outcome: Outcome::Commit
            }
        )),
        Err(StepError::Unexpected {
            kind: "Decision",
            ..
        })
    ));
    for body in [
        Body::Vote { yes: true },
        Body::DecisionAck,
        Body::StatusQuery,
    ] {
        assert!(participant.step(message(C, P[0], body)).is_err());
    }
    assert!(matches!(
        participant.step(message(C, P[1], Body::StatusQuery)),
        Err(StepError::WrongRecipient { .. })
    ));
    assert_eq!(
        participant.vote(TxnId(3), true),
        Err(VoteError::NotAsked(TxnId(3)))
    );
    assert!(Participant::new(ParticipantConfig {
        query_ticks: 0,
        ..ParticipantConfig::new(P[0])
    })
    .is_err());
}

#[test]
fn duplicates_are_harmless() {
    let mut participant = participant(P[0]);
    let request = Message {
        txn: TxnId(1),
        from: C,
        to: P[0],
        body: Body::VoteRequest {
            payload: Bytes::from("x"),
        },
    };
    participant.step(request.clone()).unwrap();
    participant.step(request.clone()).unwrap();
    assert_eq!(participant.ready().take_events().len(), 1, "asked once");
    participant.vote(TxnId(1), true).unwrap();
    participant.ready();
    // Prepared: a repeated request gets the yes again, after the ready's write (the
    // prepared record may still be in a ready not written yet).
    participant.step(request.clone()).unwrap();
    let mut ready = participant.ready();
    assert!(ready.take_messages().is_empty());
    assert_eq!(
        ready.take_persisted_messages()[0].body,
        Body::Vote { yes: true }
    );
    let commit = Message {
        txn: TxnId(1),
        from: C,
        to: P[0],
        body: Body::Decision {
            outcome: Outcome::Commit,
        },
    };
    participant.step(commit.clone()).unwrap();
    assert_eq!(participant.ready().take_events().len(), 1);
    // A resent commit is acknowledged again, and decided only once.
    participant.step(commit).unwrap();
    let mut ready = participant.ready();
    assert!(ready.take_events().is_empty());
    assert!(ready.take_messages().is_empty());
    assert_eq!(ready.take_persisted_messages()[0].body, Body::DecisionAck);
    // A duplicated request of the finished transaction does not start it again.
    participant.step(request).unwrap();
    assert!(!participant.has_ready());
}

impl Message {
    fn with_txn(mut self, txn: TxnId) -> Message {
        self.txn = txn;
        self
    }
}

#[test]
fn the_application_can_abort_a_transaction_still_voting_only() {
    let mut coordinator = coordinator();
    let mut log = DecisionLog::new();
    coordinator.begin(TxnId(1), parts(&P)).unwrap();
    coordinator.ready();
    assert!(coordinator.abort(TxnId(1)));
    let (messages, decided) = drain(&mut coordinator, &mut log);
    assert!(messages.is_empty(), "nothing before the log has the abort");
    assert_eq!(decided, [TxnId(1)]);
    assert_eq!(log.outcome(TxnId(1)), Some(Outcome::Abort));
    // Deciding already, or unknown: too late, or nothing to abort.
    assert!(!coordinator.abort(TxnId(1)));
    assert!(!coordinator.abort(TxnId(2)));
    report(&mut coordinator, &log, &decided);
    let announced = coordinator.ready().take_messages();
    assert_eq!(announced.len(), 3);
    assert!(announced.iter().all(|m| m.body
        == Body::Decision {
            outcome: Outcome::Abort
        }));
}

#[test]
fn a_participant_remembers_its_newest_finished_transactions_within_the_bound() {
    let mut config = ParticipantConfig::new(P[0]);
    config.finished_remembered = 2;
    config.payload_bytes_max = 1;
    let mut participant = Participant::new(config).unwrap();
    let request = |txn| Message {
        txn: TxnId(txn),
        from: C,
        to: P[0],
        body: Body::VoteRequest {
            payload: Bytes::from("x"), // exactly the bound
        },
    };
    for txn in 1..=3 {
        participant.step(request(txn)).unwrap();
        assert!(participant.has_ready());
        participant.ready();
        participant.vote(TxnId(txn), false).unwrap();
        assert!(participant.has_ready(), "the no vote alone is work");
        assert_eq!(participant.ready().take_messages().len(), 1);
    }
    // The two newest are remembered: their requests, repeated, start nothing.
    for txn in [2, 3] {
        participant.step(request(txn)).unwrap();
        assert!(!participant.has_ready(), "t{txn} is over");
    }
    // The oldest was forgotten, and raised the coordinator's floor: a repeated request is
    // answered no at once, without asking the application (it may be a duplicate of a
    // transaction that committed here).
    assert_eq!(participant.floor(C), Some(TxnId(1)));
    participant.step(request(1)).unwrap();
    let mut ready = participant.ready();
    assert!(ready.take_events().is_empty());
    assert!(ready.take_records().is_empty());
    assert_eq!(
        ready.take_messages(),
        [Message {
            txn: TxnId(1),
            from: P[0],
            to: C,
            body: Body::Vote { yes: false }
        }]
    );
    // Another coordinator's transactions have a floor of their own.
    assert_eq!(participant.floor(NodeId(101)), None);
    participant
        .step(Message {
            from: NodeId(101),
            ..request(1)
        })
        .unwrap();
    assert!(matches!(
        &participant.ready().take_events()[..],
        [ParticipantEvent::VoteRequested { .. }]
    ));
}

#[test]
fn a_decide_entry_that_is_not_reported_is_handed_out_again() {
    // A proposal to a Paxos group can be lost: the coordinator hands the `Decide` out again
    // every `resend_ticks` until `on_logged`, then never again.
    let mut coordinator = coordinator();
    let resend = coordinator.config().resend_ticks;
    let txn = TxnId(3);
    coordinator.begin(txn, parts(&P[..1])).unwrap();
    coordinator.ready();
    let no = Message {
        txn,
        from: P[0],
        to: C,
        body: Body::Vote { yes: false },
    };
    coordinator.step(no).unwrap();
    let decide = LogEntry::Decide {
        txn,
        outcome: Outcome::Abort,
        participants: vec![P[0]],
    };
    assert_eq!(
        coordinator.ready().take_log(),
        std::slice::from_ref(&decide)
    );
    for _ in 1..resend {
        coordinator.tick();
    }
    assert!(!coordinator.has_ready(), "handed out again too early");
    coordinator.tick();
    assert_eq!(
        coordinator.ready().take_log(),
        std::slice::from_ref(&decide)
    );
    // The copy changes nothing in the log; once reported, the coordinator is done with it.
    let mut log = DecisionLog::new();
    let (_, decided) = log.apply(&decide).unwrap();
    assert_eq!(log.apply(&decide), Some((txn, decided.clone())));
    coordinator.on_logged(txn, &decided);
    coordinator.ready();
    for _ in 0..3 * resend {
        coordinator.tick();
    }
    assert!(!coordinator.has_ready());
    assert_eq!(coordinator.in_flight(), 0);
}
