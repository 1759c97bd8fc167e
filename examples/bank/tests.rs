//! The bank's state machines and coordinator wiring, run in memory: targeted cases, and a
//! seeded sweep with lost, duplicated and reordered proposals, coordinator takeovers and
//! replicas restored from snapshots.

use super::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn origin(request: u64) -> Origin {
    Origin { node: 1, request }
}

fn adjust(account: &str, delta: i64, key: u64) -> Vec<u8> {
    Entry::Adjust {
        origin: origin(key),
        key: (0, key),
        account: account.to_string(),
        delta,
    }
    .encode()
    .to_vec()
}

fn begin(from: &str, to: &str, amount: i64, key: u64) -> Vec<u8> {
    Entry::Begin {
        origin: origin(key),
        key: (0, key),
        transfer: Transfer {
            from: from.to_string(),
            to: to.to_string(),
            amount,
        },
    }
    .encode()
    .to_vec()
}

fn vote_request(shard: u64, txn: u64, ops: &Ops) -> Vec<u8> {
    Entry::TwoPc(Message {
        txn: TxnId(txn),
        from: COORDINATOR,
        to: participant_id(shard),
        body: Body::VoteRequest {
            payload: encode_ops(ops),
        },
    })
    .encode()
    .to_vec()
}

fn decision(shard: u64, txn: u64, outcome: Outcome) -> Vec<u8> {
    Entry::TwoPc(Message {
        txn: TxnId(txn),
        from: COORDINATOR,
        to: participant_id(shard),
        body: Body::Decision { outcome },
    })
    .encode()
    .to_vec()
}

fn vote(messages: &[Message]) -> Option<bool> {
    match messages {
        [Message {
            body: Body::Vote { yes },
            ..
        }] => Some(*yes),
        _ => None,
    }
}

#[test]
fn adjust_deposits_withdraws_and_refuses_overdrafts_and_bad_input() {
    let mut shard = Shard::new(1);
    let balance = |balance| Some(Answer::Balance { balance, held: 0 });
    assert_eq!(shard.apply(&adjust("alice", 100, 1)).answer, balance(100));
    assert_eq!(shard.apply(&adjust("alice", -30, 2)).answer, balance(70));
    assert_eq!(
        shard.apply(&adjust("alice", -71, 3)).answer,
        Some(Answer::Insufficient {
            balance: 70,
            held: 0
        })
    );
    for (account, delta) in [("alice", 0), ("alice", i64::MIN), ("", 5), ("a b", 5)] {
        let answer = shard.apply(&adjust(account, delta, 4)).answer;
        assert!(matches!(answer, Some(Answer::Refused(_))), "{answer:?}");
    }
    let answer = shard.apply(&adjust("alice", AMOUNT_MAX + 1, 5)).answer;
    assert!(matches!(answer, Some(Answer::Refused(_))));
    // Garbage and another group's entries change nothing.
    let before = shard.clone();
    assert_eq!(shard.apply(b"\xff\x00garbage").answer, None);
    let answer = shard.apply(&begin("alice", "bob", 1, 6)).answer;
    assert!(matches!(answer, Some(Answer::Refused(_))));
    assert_eq!(shard, before);
    assert_eq!(shard.balance("alice"), (70, 0));
}

#[test]
fn a_retried_key_has_one_effect_and_the_first_answer() {
    let mut shard = Shard::new(1);
    shard.apply(&adjust("alice", 100, 1));
    assert_eq!(
        shard.apply(&adjust("alice", -40, 2)).answer,
        Some(Answer::Balance {
            balance: 60,
            held: 0
        })
    );
    // The retry answers like the first time, and withdraws nothing more.
    assert_eq!(
        shard.apply(&adjust("alice", -40, 2)).answer,
        Some(Answer::Balance {
            balance: 60,
            held: 0
        })
    );
    assert_eq!(shard.balance("alice"), (60, 0));

    let mut ledger = Ledger::new();
    let first = ledger.apply(10, &begin("alice", "bob", 5, 7));
    assert_eq!(first.answer, Some(Answer::Begun(TxnId(10))));
    assert_eq!(first.begun.as_ref().map(|(txn, _)| *txn), Some(TxnId(10)));
    let again = ledger.apply(11, &begin("alice", "bob", 5, 7));
    assert_eq!(again.answer, Some(Answer::Begun(TxnId(10))));
    assert_eq!(again.begun, None);
    assert_eq!(ledger.pending_count(), 1);
}

/// A ledger `Decide` entry of `txn`.
fn decide(txn: u64, outcome: Outcome) -> Vec<u8> {
    Entry::Decision(LogEntry::Decide {
        txn: TxnId(txn),
        outcome,
        participants: vec![participant_id(1)],
    })
    .encode()
    .to_vec()
}

/// A ledger `Forget` entry of `txn`.
fn forget(txn: u64) -> Vec<u8> {
    Entry::Decision(LogEntry::Forget { txn: TxnId(txn) })
        .encode()
        .to_vec()
}

/// Begins, commits and forgets `count` transfers at slots from `first` (keys alike): the
/// decision log drops the oldest past its window and raises its floor.
fn run_transfers(ledger: &mut Ledger, first: u64, count: u64) {
    for slot in first..first + count {
        ledger.apply(slot, &begin("alice", "bob", 1, slot));
        ledger.apply(slot, &decide(slot, Outcome::Commit));
        ledger.apply(slot, &forget(slot));
    }
}

/// Bug: a transfer whose first `Decide` reached the decision log below its floor was aborted
/// (the log answers abort, and the coordinator tells the shards) but recorded nowhere: `TXN`
/// answered `UNKNOWN` for a transfer that had aborted, and a retry with its key waited 10 s
/// for a decision that had come already. The ledger now keeps the outcome of every transfer
/// it decided (the newest `OUTCOMES_MAX`), the floor's abort included.
#[test]
fn a_transfer_aborted_at_the_decision_logs_floor_is_answered_aborted() {
    let mut ledger = Ledger::new();
    let late = ledger.apply(1, &begin("carol", "dave", 5, 1));
    assert_eq!(late.answer, Some(Answer::Begun(TxnId(1))));
    // More transfers than the decision log remembers finish meanwhile (with higher ids).
    run_transfers(&mut ledger, 2, DecisionLog::FINISHED_MAX as u64 + 1);
    // The first Decide of transaction 1 comes in below the floor: abort, whatever it asked.
    let applied = ledger.apply(70_000, &decide(1, Outcome::Commit));
    assert_eq!(
        applied.decided.map(|(txn, decided)| (txn, decided.outcome)),
        Some((TxnId(1), Outcome::Abort))
    );
    assert!(!ledger.pending(TxnId(1)));
    assert_eq!(ledger.outcome(TxnId(1)), Some(Outcome::Abort));
    assert_eq!(ledger.status(TxnId(1)), TxnStatus::Decided(Outcome::Abort));
    // A retry with its key is the same transaction, with that outcome.
    let again = ledger.apply(70_001, &begin("carol", "dave", 5, 1));
    assert_eq!(again.answer, Some(Answer::Begun(TxnId(1))));
    assert_eq!(ledger.outcome(TxnId(1)), Some(Outcome::Abort));
    // The snapshot keeps it.
    let restored = Ledger::restore(&ledger.snapshot()).unwrap();
    assert_eq!(
        restored.status(TxnId(1)),
        TxnStatus::Decided(Outcome::Abort)
    );
}

/// Bug: the decision log remembers 65 536 finished transactions, the ledger 100 000 keys: a
/// client retrying a committed transfer with its key, after more than 65 536 others had
/// finished, got its transaction back (`Begun`) and then no outcome: `-TRYAGAIN ... not
/// decided yet`, and `TXN` answered `UNKNOWN`. Its outcome is kept now as long as its key.
#[test]
fn a_keyed_retry_of_a_long_finished_transfer_learns_its_outcome() {
    let mut ledger = Ledger::new();
    ledger.apply(1, &begin("carol", "dave", 5, 1));
    ledger.apply(2, &decide(1, Outcome::Commit));
    ledger.apply(3, &forget(1));
    run_transfers(&mut ledger, 10, DecisionLog::FINISHED_MAX as u64 + 10);
    let again = ledger.apply(80_000, &begin("carol", "dave", 5, 1));
    assert_eq!(again.answer, Some(Answer::Begun(TxnId(1))));
    assert_eq!(again.begun, None);
    assert_eq!(ledger.outcome(TxnId(1)), Some(Outcome::Commit));
    assert_eq!(ledger.status(TxnId(1)), TxnStatus::Decided(Outcome::Commit));
}

/// Past every window, `TXN` tells a transaction it forgot (`FORGOTTEN`) from one that never
/// was (`UNKNOWN`, above everything forgotten), and a late copy of a `Decide` about a
/// forgotten committed transfer (the log answers abort, unrecorded) does not make it read
/// as aborted.
#[test]
fn the_ledger_tells_forgotten_transfers_from_unknown_ones() {
    let mut ledger = Ledger::new();
    ledger.apply(1, &begin("carol", "dave", 5, 1));
    ledger.apply(2, &decide(1, Outcome::Commit));
    ledger.apply(3, &forget(1));
    let last = 10 + OUTCOMES_MAX as u64 + 5;
    run_transfers(&mut ledger, 10, OUTCOMES_MAX as u64 + 5);
    assert_eq!(ledger.status(TxnId(1)), TxnStatus::Forgotten);
    assert_eq!(
        ledger.status(TxnId(last - 1)),
        TxnStatus::Decided(Outcome::Commit)
    );
    assert_eq!(ledger.status(TxnId(last + 100)), TxnStatus::Unknown);
    let late = ledger.apply(last + 1, &decide(1, Outcome::Commit));
    assert_eq!(
        late.decided.map(|(_, decided)| decided.outcome),
        Some(Outcome::Abort)
    );
    assert_eq!(ledger.outcome(TxnId(1)), None);
    assert_eq!(ledger.status(TxnId(1)), TxnStatus::Forgotten);
}

#[test]
fn the_ledger_refuses_bad_transfers() {
    let mut ledger = Ledger::new();
    for bytes in [
        begin("alice", "alice", 5, 1),
        begin("alice", "bob", 0, 2),
        begin("alice", "", 5, 3),
        adjust("alice", 5, 4),
    ] {
        let applied = ledger.apply(1, &bytes);
        assert!(matches!(applied.answer, Some(Answer::Refused(_))));
        assert_eq!(applied.begun, None);
    }
    assert_eq!(ledger.apply(2, b"junk"), LedgerApplied::default());
    assert_eq!(ledger.pending_count(), 0);
}

#[test]
fn a_vote_holds_the_debit_until_the_decision() {
    let mut shard = Shard::new(1);
    shard.apply(&adjust("alice", 100, 1));
    let ops = vec![("alice".to_string(), -60), ("bob".to_string(), 60)];
    let applied = shard.apply(&vote_request(1, 5, &ops));
    assert_eq!(vote(&applied.messages), Some(true));
    assert_eq!(shard.balance("alice"), (100, 60));
    assert_eq!(shard.prepared(), vec![TxnId(5)]);
    // What is held is not available: a second transfer of 60, and a withdrawal of 41, fail.
    let applied = shard.apply(&vote_request(1, 6, &[("alice".to_string(), -60)].to_vec()));
    assert_eq!(vote(&applied.messages), Some(false));
    assert!(matches!(
        shard.apply(&adjust("alice", -41, 2)).answer,
        Some(Answer::Insufficient { .. })
    ));
    // A duplicated vote request gets the same vote again.
    assert_eq!(
        vote(&shard.apply(&vote_request(1, 5, &ops)).messages),
        Some(true)
    );
    // Commit: the debit and the credit apply, and the ack goes back.
    let applied = shard.apply(&decision(1, 5, Outcome::Commit));
    assert!(matches!(
        applied.messages.as_slice(),
        [Message {
            body: Body::DecisionAck,
            ..
        }]
    ));
    assert_eq!(shard.balance("alice"), (40, 0));
    assert_eq!(shard.balance("bob"), (60, 0));
    assert!(shard.prepared().is_empty());
    // Abort of another: its hold is released and nothing moves.
    let applied = shard.apply(&vote_request(1, 7, &[("alice".to_string(), -40)].to_vec()));
    assert_eq!(vote(&applied.messages), Some(true));
    assert_eq!(shard.balance("alice"), (40, 40));
    shard.apply(&decision(1, 7, Outcome::Abort));
    assert_eq!(shard.balance("alice"), (40, 0));
    assert_eq!(shard.total(), 100);
}

/// Bug: `TRANSFER` answered `+COMMITTED` (and `TXN` `+COMMITTED`) on the ledger's word
/// alone, but the shards apply a decision only after the ledger logs it: a `BALANCE` right
/// after could miss the transfer. A commit is visible (`Ledger::commit_visible`, what the
/// server now waits for) once every shard it involves has applied it: as a replica of each
/// shard shows (`Shard::commit_applied`, also past the participant's window of finished
/// transactions), or as the ledger's `Forget` says.
#[test]
fn a_commit_is_visible_once_every_shard_has_applied_it() {
    let (mut one, mut two) = (Shard::new(1), Shard::new(2));
    one.apply(&adjust("alice", 100, 1));
    let debit = vec![("alice".to_string(), -30)];
    let credit = vec![("bob".to_string(), 30)];
    let mut ledger = Ledger::new();
    assert_eq!(
        ledger.apply(1, &begin("alice", "bob", 30, 1)).answer,
        Some(Answer::Begun(TxnId(1)))
    );
    assert_eq!(
        vote(&one.apply(&vote_request(1, 1, &debit)).messages),
        Some(true)
    );
    // Shard 2's replica here lags: it has not even applied the vote request yet.
    let mut lagging = two.clone();
    assert_eq!(
        vote(&two.apply(&vote_request(2, 1, &credit)).messages),
        Some(true)
    );
    let commit = Entry::Decision(LogEntry::Decide {
        txn: TxnId(1),
        outcome: Outcome::Commit,
        participants: vec![participant_id(1), participant_id(2)],
    });
    ledger.apply(2, &commit.encode());
    // The ledger has decided: what `+COMMITTED` was answered on, before the fix.
    assert_eq!(ledger.status(TxnId(1)), TxnStatus::Decided(Outcome::Commit));
    assert_eq!(ledger.unacknowledged_commit(TxnId(1)), Some(vec![1, 2]));
    // No shard has applied it: a read would miss it.
    assert!(!one.commit_applied(TxnId(1)) && !two.commit_applied(TxnId(1)));
    assert_eq!(one.balance("alice"), (100, 30));
    let visible = |ledger: &Ledger, one: &Shard, two: &Shard| {
        ledger.commit_visible(TxnId(1), |shard| match shard {
            1 => one.commit_applied(TxnId(1)),
            2 => two.commit_applied(TxnId(1)),
            _ => false,
        })
    };
    assert!(!visible(&ledger, &one, &two));
    // One shard applies it: not yet.
    one.apply(&decision(1, 1, Outcome::Commit));
    assert!(one.commit_applied(TxnId(1)));
    assert_eq!(one.balance("alice"), (70, 0));
    assert!(!visible(&ledger, &one, &two));
    assert!(!visible(&ledger, &one, &lagging));
    // Both: visible (the decision is in both shards' logs).
    two.apply(&decision(2, 1, Outcome::Commit));
    assert!(visible(&ledger, &one, &two));
    assert_eq!(two.balance("bob"), (30, 0));
    // The lagging replica catches up through the same entries.
    lagging.apply(&vote_request(2, 1, &credit));
    assert!(!lagging.commit_applied(TxnId(1)));
    lagging.apply(&decision(2, 1, Outcome::Commit));
    assert!(lagging.commit_applied(TxnId(1)));
    // Past the participant's window of finished transactions, its floor says it.
    for txn in 2..=FINISHED_REMEMBERED as u64 + 2 {
        one.apply(&vote_request(1, txn, &vec![("carol".to_string(), 1)]));
        one.apply(&decision(1, txn, Outcome::Commit));
    }
    assert!(!one.records.finished_set.contains(&TxnId(1)));
    assert!(one.commit_applied(TxnId(1)));
    let restored = Shard::restore(1, &one.snapshot()).unwrap();
    assert!(restored.commit_applied(TxnId(1)));
    // An abort, and a transaction never begun, are never visible commits.
    ledger.apply(3, &begin("alice", "bob", 5, 2));
    ledger.apply(4, &decide(3, Outcome::Abort));
    assert!(!ledger.commit_visible(TxnId(3), |_| true));
    assert!(!ledger.commit_visible(TxnId(99), |_| true));
    // The `Forget` (every participant acknowledged): visible whatever the replicas here.
    ledger.apply(5, &forget(1));
    assert_eq!(ledger.unacknowledged_commit(TxnId(1)), None);
    assert!(ledger.commit_visible(TxnId(1), |_| false));
    let restored = Ledger::restore(&ledger.snapshot()).unwrap();
    assert!(restored.commit_visible(TxnId(1), |_| false));
}

#[test]
fn malformed_vote_requests_get_no() {
    let mut shard = Shard::new(1);
    shard.apply(&adjust("alice", 100, 1));
    for (txn, ops) in [
        vec![],
        vec![("alice".to_string(), 0)],
        vec![("".to_string(), 5)],
        vec![("bob".to_string(), BALANCE_MAX)],
    ]
    .into_iter()
    .enumerate()
    {
        let applied = shard.apply(&vote_request(1, 20 + txn as u64, &ops));
        assert_eq!(vote(&applied.messages), Some(false), "{ops:?}");
    }
    let garbage = Entry::TwoPc(Message {
        txn: TxnId(10),
        from: COORDINATOR,
        to: participant_id(1),
        body: Body::VoteRequest {
            payload: Bytes::from_static(b"\xff\xff\xff"),
        },
    });
    assert_eq!(vote(&shard.apply(&garbage.encode()).messages), Some(false));
    // Addressed to another shard: refused by the participant, nothing changes.
    let before = shard.clone();
    let applied = shard.apply(&vote_request(2, 11, &[("alice".to_string(), -1)].to_vec()));
    assert!(applied.messages.is_empty());
    assert_eq!(shard, before);
    assert_eq!(shard.balance("alice"), (100, 0));
}

#[test]
fn a_restored_shard_remembers_its_no_votes() {
    // The participant remembers a transaction it voted no on, so that a duplicated vote
    // request does not prepare it later; a replica restored from a snapshot must remember it
    // too, or the two replicas would vote differently on the duplicate.
    let mut shard = Shard::new(1);
    let ops = vec![("alice".to_string(), -50)];
    assert_eq!(
        vote(&shard.apply(&vote_request(1, 3, &ops)).messages),
        Some(false)
    );
    let mut restored = Shard::restore(1, &shard.snapshot()).unwrap();
    for replica in [&mut shard, &mut restored] {
        replica.apply(&adjust("alice", 100, 1));
        let applied = replica.apply(&vote_request(1, 3, &ops));
        assert!(applied.messages.is_empty());
        assert_eq!(replica.balance("alice"), (100, 0));
    }
    assert_eq!(shard.snapshot(), restored.snapshot());
}

#[test]
fn a_duplicate_vote_request_after_the_window_does_not_move_money_twice() {
    // The participant forgets the oldest of its finished transactions beyond
    // FINISHED_REMEMBERED, and keeps a floor instead: a vote request at or below it for a
    // transaction it does not know gets no. Without the floor, a duplicate of t1's request
    // (a coordinator's resend chosen late in the shard's log) would prepare t1 again, and the
    // ledger, which still remembers t1's commit, would have it applied a second time. A
    // replica restored from a snapshot must keep the same floor, or the replicas would vote
    // differently on the duplicate.
    let mut shard = Shard::new(1);
    shard.apply(&adjust("alice", 10_000, 1));
    let ops = |amount: i64| vec![("alice".to_string(), -amount), ("bob".to_string(), amount)];
    let first = vote_request(1, 1, &ops(100));
    assert_eq!(vote(&shard.apply(&first).messages), Some(true));
    shard.apply(&decision(1, 1, Outcome::Commit));
    for txn in 2..=FINISHED_REMEMBERED as u64 + 1 {
        assert_eq!(
            vote(&shard.apply(&vote_request(1, txn, &ops(1))).messages),
            Some(true)
        );
        shard.apply(&decision(1, txn, Outcome::Commit));
    }
    let moved = 100 + FINISHED_REMEMBERED as i64;
    assert_eq!(shard.balance("alice"), (10_000 - moved, 0));
    let mut restored = Shard::restore(1, &shard.snapshot()).unwrap();
    assert_eq!(restored, shard);
    for replica in [&mut shard, &mut restored] {
        assert_eq!(vote(&replica.apply(&first).messages), Some(false));
        assert!(replica.prepared().is_empty());
        // The ledger's commit, resent to a participant that is past t1: acknowledged only.
        replica.apply(&decision(1, 1, Outcome::Commit));
        assert_eq!(replica.balance("alice"), (10_000 - moved, 0));
        assert_eq!(replica.balance("bob"), (moved, 0));
    }
    assert_eq!(shard.snapshot(), restored.snapshot());
}

#[test]
fn snapshots_round_trip_and_bad_ones_are_refused() {
    let mut shard = Shard::new(2);
    shard.apply(&adjust("alice", 100, 1));
    let ops = vec![("alice".to_string(), -60), ("bob".to_string(), 60)];
    shard.apply(&vote_request(2, 5, &ops));
    let bytes = shard.snapshot();
    let restored = Shard::restore(2, &bytes).unwrap();
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.prepared(), vec![TxnId(5)]);
    assert_eq!(restored.balance("alice"), (100, 60));
    assert!(Shard::restore(3, &bytes).is_err());
    assert!(Shard::restore(2, &bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Shard::restore(2, &longer).is_err());
    // A hold that no prepared record explains.
    let mut image: ShardImage = decode(&bytes).unwrap();
    image.records.prepared.clear();
    assert!(Shard::restore(2, &encode(&image)).is_err());

    let mut ledger = Ledger::new();
    ledger.apply(1, &begin("alice", "bob", 5, 1));
    let bytes = ledger.snapshot();
    assert_eq!(Ledger::restore(&bytes).unwrap(), ledger);
    assert!(Ledger::restore(&bytes[1..]).is_err());
}

#[test]
fn placement_splits_a_transfer_by_shard() {
    let placement = Placement::new(4).unwrap();
    let shards: BTreeSet<u64> = (0..64)
        .map(|i| placement.shard(&format!("account-{i}")))
        .collect();
    assert_eq!(shards, (1..=4).collect());
    let (a, b) = two_accounts(&placement, false);
    let parts = placement.parts(&Transfer {
        from: a.clone(),
        to: b.clone(),
        amount: 7,
    });
    assert_eq!(parts.len(), 2);
    let (c, d) = two_accounts(&placement, true);
    let parts = placement.parts(&Transfer {
        from: c.clone(),
        to: d.clone(),
        amount: 7,
    });
    assert_eq!(parts.len(), 1);
    assert_eq!(decode_ops(&parts[0].1).unwrap(), vec![(c, -7), (d, 7)]);
    assert!(Placement::new(0).is_err());
}

/// Two accounts on the same shard, or on different ones.
fn two_accounts(placement: &Placement, same: bool) -> (String, String) {
    let first = "account-0".to_string();
    let second = (1..)
        .map(|i| format!("account-{i}"))
        .find(|name| (placement.shard(name) == placement.shard(&first)) == same)
        .unwrap();
    (first, second)
}

// ---------------------------------------------------------------------------------------
// The whole bank in memory.

/// Every group's log as a queue of proposals, applied one at a time to the ledger and to
/// two replicas of every shard; the coordinator runs on the side of the first replicas.
struct World {
    rng: ChaCha8Rng,
    faults: bool,
    placement: Placement,
    ledger: Ledger,
    slot: Slot,
    shards: Vec<Shard>,
    twins: Vec<Shard>,
    queues: Vec<VecDeque<Entry>>,
    coordination: Coordination,
    transfers: BTreeMap<TxnId, Transfer>,
    outcomes: BTreeMap<TxnId, Outcome>,
    /// The decisions the shards' logs applied and acknowledged: (shard, transaction).
    acknowledged: BTreeSet<(u64, TxnId)>,
    /// The commits found visible, on the side of the first replicas and of the twins (they
    /// stay visible: checked once).
    visible: [BTreeSet<TxnId>; 2],
    ticks: u64,
    takeovers: u64,
}

impl World {
    fn new(seed: u64, shards: u64, faults: bool) -> World {
        let placement = Placement::new(shards).unwrap();
        let mut coordination = Coordination::new(placement.clone(), 30, 8).unwrap();
        let ledger = Ledger::new();
        coordination.take_over(&ledger);
        World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults,
            placement,
            ledger,
            slot: 0,
            shards: (1..=shards).map(Shard::new).collect(),
            twins: (1..=shards).map(Shard::new).collect(),
            queues: (0..=shards).map(|_| VecDeque::new()).collect(),
            coordination,
            transfers: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            visible: Default::default(),
            ticks: 0,
            takeovers: 0,
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.next_u32() % 100 < percent
    }

    fn propose(&mut self, group: u64, entry: Entry) {
        self.queues[group as usize].push_back(entry);
    }

    /// Chooses one proposal of some group (lost, duplicated or overtaken under faults) and
    /// applies it. False if nothing is proposed.
    fn step(&mut self) -> bool {
        let busy: Vec<usize> = (0..self.queues.len())
            .filter(|&group| !self.queues[group].is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let group = busy[self.rng.next_u32() as usize % busy.len()];
        let queue_len = self.queues[group].len();
        let index = if self.faults && self.chance(20) {
            self.rng.next_u32() as usize % queue_len
        } else {
            0
        };
        let entry = self.queues[group].remove(index).unwrap();
        if self.faults && self.chance(5) {
            return true;
        }
        if self.faults && self.chance(5) {
            self.queues[group].push_back(entry.clone());
        }
        let bytes = entry.encode();
        if group == LEDGER as usize {
            self.slot += 1;
            let applied = self.ledger.apply(self.slot, &bytes);
            if let Some((txn, transfer)) = &applied.begun {
                self.transfers.insert(*txn, transfer.clone());
                self.coordination.begun(*txn, transfer);
            }
            if let Some((txn, decided)) = &applied.decided {
                let first = *self.outcomes.entry(*txn).or_insert(decided.outcome);
                assert_eq!(first, decided.outcome, "{txn} decided twice, differently");
                self.coordination.logged(*txn, decided);
            }
        } else {
            let index = group - 1;
            let applied = self.shards[index].apply(&bytes);
            let twin = self.twins[index].apply(&bytes);
            assert_eq!(applied, twin, "the replicas of shard {group} disagree");
            for message in &applied.messages {
                if message.body == Body::DecisionAck {
                    self.acknowledged.insert((group as u64, message.txn));
                }
            }
            self.coordination.deliver(applied.messages);
        }
        self.route();
        self.check_visible_commits();
        true
    }

    /// Whether the server would answer `+COMMITTED` for `txn` now, on the process that holds
    /// `replicas` of the shards.
    fn commit_visible(&self, txn: TxnId, replicas: &[Shard]) -> bool {
        self.ledger.commit_visible(txn, |shard| {
            (1..=replicas.len() as u64).contains(&shard)
                && replicas[shard as usize - 1].commit_applied(txn)
        })
    }

    /// A commit the server would answer `+COMMITTED` for (on the side of either replicas)
    /// is in the log of every shard it involves: each applied the decision and acknowledged
    /// it, and holds nothing of it any more.
    fn check_visible_commits(&mut self) {
        let mut found = Vec::new();
        for (txn, outcome) in &self.outcomes {
            for (side, replicas) in [&self.shards, &self.twins].into_iter().enumerate() {
                if self.visible[side].contains(txn) || !self.commit_visible(*txn, replicas) {
                    continue;
                }
                found.push((side, *txn));
                assert_eq!(*outcome, Outcome::Commit, "{txn} is visible, not committed");
                for (participant, _) in self.placement.parts(&self.transfers[txn]) {
                    let shard = participant.0;
                    assert!(
                        self.acknowledged.contains(&(shard, *txn)),
                        "{txn} is visible before shard {shard} applied it"
                    );
                    let replica = &replicas[shard as usize - 1];
                    assert!(!replica.prepared().contains(txn), "{txn}: still prepared");
                }
            }
        }
        for (side, txn) in found {
            self.visible[side].insert(txn);
        }
    }

    fn route(&mut self) {
        for (group, entry) in self.coordination.take_proposals() {
            self.propose(group, entry);
        }
    }

    fn tick(&mut self) {
        self.ticks += 1;
        self.coordination.tick();
        if self.ticks % 20 == 0 {
            for index in 0..self.shards.len() {
                let prepared = self.shards[index].prepared();
                self.coordination.query(index as u64 + 1, prepared);
            }
        }
        self.route();
        if self.faults && self.chance(2) {
            // The ledger's leader changes: the old coordinator's proposals in flight stay.
            self.coordination.step_down();
            self.coordination.take_over(&self.ledger);
            self.takeovers += 1;
            self.route();
        }
        if self.faults && self.chance(3) {
            let index = self.rng.next_u32() as usize % self.twins.len();
            let bytes = self.twins[index].snapshot();
            self.twins[index] = Shard::restore(index as u64 + 1, &bytes).unwrap();
            assert_eq!(self.twins[index].snapshot(), bytes);
        }
    }

    fn total(&self) -> i64 {
        self.shards.iter().map(Shard::total).sum()
    }
}

/// Runs random transfers among `accounts` accounts under faults, then lets everything
/// settle without faults, and checks the bank: every transfer decided, the balances exactly
/// those of the committed transfers, nothing held, no money made or lost.
fn run(seed: u64, shards: u64, accounts: usize, transfers: u64) -> (usize, usize, u64) {
    let mut world = World::new(seed, shards, true);
    let names: Vec<String> = (0..accounts).map(|i| format!("acct{i}")).collect();
    let deposit = 100;
    for (i, name) in names.iter().enumerate() {
        let shard = world.placement.shard(name);
        world.propose(
            shard,
            Entry::Adjust {
                origin: Origin::default(),
                key: (0, 1_000_000 + i as u64),
                account: name.clone(),
                delta: deposit,
            },
        );
    }
    world.faults = false;
    while world.step() {}
    world.faults = true;
    let mut key = 0;
    for round in 0..transfers * 40 {
        if round % 40 == 0 {
            key += 1;
            let from = names[world.rng.next_u32() as usize % accounts].clone();
            let to = names[world.rng.next_u32() as usize % accounts].clone();
            let amount = 1 + i64::from(world.rng.next_u32() % 60);
            let entry = Entry::decode(&begin(&from, &to, amount, key)).unwrap();
            world.propose(LEDGER, entry);
        }
        if round % 3 == 0 {
            world.tick();
        }
        world.step();
    }
    // Settle: no more faults; the coordinator resends and the shards ask until all is done.
    world.faults = false;
    let mut quiet = 0;
    while quiet < 200 {
        let busy = world.step();
        world.tick();
        let done = world.ledger.pending_count() == 0
            && world.shards.iter().all(|shard| shard.prepared().is_empty());
        quiet = if busy || !done { 0 } else { quiet + 1 };
        assert!(
            world.ticks < 1_000_000,
            "seed {seed}: the bank does not settle: pending {:?}, prepared {:?}, coordinator {:?}",
            world.ledger.pending,
            world.shards.iter().map(Shard::prepared).collect::<Vec<_>>(),
            world.coordination
        );
    }
    let mut expected: BTreeMap<&str, i64> = names.iter().map(|n| (n.as_str(), deposit)).collect();
    let mut committed = 0;
    for (txn, transfer) in &world.transfers {
        let outcome = world.ledger.outcome(*txn);
        let outcome = outcome.unwrap_or_else(|| panic!("seed {seed}: {txn} undecided"));
        assert_eq!(Some(&outcome), world.outcomes.get(txn));
        if outcome == Outcome::Commit {
            // Once everything settled, a committed transfer is answered on both sides.
            assert!(
                world.commit_visible(*txn, &world.shards),
                "seed {seed}: {txn}"
            );
            assert!(
                world.commit_visible(*txn, &world.twins),
                "seed {seed}: {txn}"
            );
            committed += 1;
            *expected.get_mut(transfer.from.as_str()).unwrap() -= transfer.amount;
            *expected.get_mut(transfer.to.as_str()).unwrap() += transfer.amount;
        }
    }
    for name in &names {
        let shard = &world.shards[world.placement.shard(name) as usize - 1];
        assert_eq!(
            shard.balance(name),
            (expected[name.as_str()], 0),
            "seed {seed}: account {name}"
        );
        assert!(expected[name.as_str()] >= 0);
    }
    assert_eq!(world.total(), deposit * accounts as i64);
    for (shard, twin) in world.shards.iter().zip(&world.twins) {
        assert_eq!(shard.snapshot(), twin.snapshot(), "seed {seed}");
    }
    (world.transfers.len(), committed, world.takeovers)
}

#[test]
fn transfers_commit_or_abort_atomically_under_faults() {
    let number = |name: &str| std::env::var(name).ok().and_then(|text| text.parse().ok());
    let seeds: u64 = number("BANK_SEEDS").unwrap_or(60);
    let range = match number("BANK_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..seeds,
    };
    let seeds = range.end - range.start;
    let (mut begun, mut committed, mut takeovers) = (0, 0, 0);
    for seed in range {
        let shards = 1 + seed % 3;
        let (b, c, t) = run(seed, shards, 6, 60);
        begun += b;
        committed += c;
        takeovers += t;
    }
    eprintln!(
        "{seeds} seeds: {begun} transfers begun, {committed} committed, {takeovers} coordinator takeovers (replay one seed: BANK_SEED=n)"
    );
    // The sweep is only worth something if both outcomes and takeovers happen.
    assert!(committed > begun / 4, "{committed} of {begun} committed");
    if seeds > 10 {
        assert!(committed < begun, "nothing aborted");
        assert!(takeovers > seeds, "{takeovers} takeovers");
    }
}

#[test]
fn a_full_coordinator_begins_the_transfers_it_deferred_once_it_has_room() {
    let mut world = World::new(1, 2, false);
    world.coordination.config.txns_max = 1;
    world.coordination.take_over(&world.ledger);
    let placement = world.placement.clone();
    let (a, b) = two_accounts(&placement, false);
    for (i, account) in [&a, &b].into_iter().enumerate() {
        let shard = placement.shard(account);
        let entry = Entry::decode(&adjust(account, 100, 50 + i as u64)).unwrap();
        world.propose(shard, entry);
    }
    for key in 1..=3 {
        let entry = Entry::decode(&begin(&a, &b, 10, key)).unwrap();
        world.propose(LEDGER, entry);
    }
    for _ in 0..2000 {
        world.step();
        world.tick();
    }
    assert_eq!(world.transfers.len(), 3);
    for txn in world.transfers.keys() {
        assert_eq!(world.ledger.outcome(*txn), Some(Outcome::Commit), "{txn}");
    }
    let shard_of = |name: &str| &world.shards[placement.shard(name) as usize - 1];
    assert_eq!(shard_of(&a).balance(&a), (70, 0));
    assert_eq!(shard_of(&b).balance(&b), (130, 0));
}

mod bad_input {
    use super::*;
    use proptest::prelude::*;

    /// Valid entries of every kind, to be damaged.
    fn samples() -> Vec<Vec<u8>> {
        let ops = vec![("alice".to_string(), -5), ("bob".to_string(), 5)];
        vec![
            adjust("alice", 100, 1),
            begin("alice", "bob", 5, 2),
            vote_request(1, 3, &ops),
            decision(1, 3, Outcome::Commit),
            Entry::Read {
                origin: origin(4),
                account: "alice".to_string(),
            }
            .encode()
            .to_vec(),
            Entry::Decision(LogEntry::Decide {
                txn: TxnId(3),
                outcome: Outcome::Commit,
                participants: vec![participant_id(1)],
            })
            .encode()
            .to_vec(),
        ]
    }

    proptest! {
        /// Whatever the bytes (random, or a valid entry with bytes changed, cut or added),
        /// applying them and restoring from them never panics, and what the state machines
        /// keep stays restorable.
        #[test]
        fn damaged_entries_and_snapshots_never_panic(
            sample in 0usize..6,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            random in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = samples()[sample].clone();
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let mut shard = Shard::new(1);
            shard.apply(&adjust("alice", 100, 1));
            let mut ledger = Ledger::new();
            for data in [&bytes, &random] {
                shard.apply(data);
                ledger.apply(7, data);
                let _ = Shard::restore(1, data);
                let _ = Ledger::restore(data);
            }
            let restored = Shard::restore(1, &shard.snapshot()).unwrap();
            prop_assert_eq!(restored.snapshot(), shard.snapshot());
            prop_assert_eq!(Ledger::restore(&ledger.snapshot()).unwrap(), ledger);
        }
    }
}
