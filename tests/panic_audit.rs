//! The panic audit: every panic reachable from the public API or from input that was found
//! in src/ is a typed error now (or a safe answer). Each test here reached a panic (or, for
//! the client ids and the 2PC floors, lost data / grew memory without bound) before its fix.

use bytes::Bytes;
use proptest::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use synod::kv::{Command, KvError, KvLimits, KvStateMachine, Operation, Response};
use synod::session::{
    ClientId, Outcome, RequestHeader, SessionError, SessionLimits, SessionTable, CLIENT_IDS_MAX,
};
use synod::sim::{SimConfig, SimSetupError, Simulation};
use synod::twopc::{
    Body, Message, Participant, ParticipantConfig, ParticipantEvent, ParticipantRecord, TxnId,
};
use synod::NodeId;

fn header(client: ClientId, sequence: u64) -> RequestHeader {
    RequestHeader {
        client,
        sequence,
        acknowledged_below: 0,
    }
}

// ---- kv ----------------------------------------------------------------------------------

/// Was `assert!(limits.validate().is_ok())` in `KvStateMachine::new`.
#[test]
fn kv_new_with_invalid_limits_is_an_error() {
    let limits = KvLimits {
        keys_max: 0,
        ..KvLimits::default()
    };
    let error = KvStateMachine::new(limits).unwrap_err();
    assert_eq!(error.field, "keys_max");
}

/// Was `assert!(slot > self.last_applied_slot)` in `KvStateMachine::apply` and
/// `apply_command`: a replayed or out-of-order slot now answers `SlotReplayed`, unchanged.
#[test]
fn kv_replayed_slot_is_an_error_and_changes_nothing() {
    let mut machine = KvStateMachine::new(KvLimits::default()).unwrap();
    let Response::SessionOpened { client } = machine.apply(5, &Command::OpenSession.encode())
    else {
        panic!("open failed")
    };
    let put = Command::Request {
        header: header(client, 1),
        operation: Operation::Put {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
        },
    };
    let before = machine.snapshot();
    for slot in [0, 3, 5] {
        assert_eq!(
            machine.apply(slot, &put.encode()),
            Response::Error(KvError::SlotReplayed { slot, last: 5 })
        );
        assert_eq!(
            machine.apply_command(slot, put.clone()),
            Response::Error(KvError::SlotReplayed { slot, last: 5 })
        );
        assert_eq!(
            machine.apply(slot, b"garbage"),
            Response::Error(KvError::SlotReplayed { slot, last: 5 })
        );
    }
    assert_eq!(machine.snapshot(), before);
    assert!(matches!(
        machine.apply(6, &put.encode()),
        Response::Output(_)
    ));
}

proptest! {
    /// Any slot sequence, any bytes: `apply` never panics, and only increasing slots count.
    #[test]
    fn kv_apply_never_panics(steps in prop::collection::vec((0u64..20, prop::collection::vec(any::<u8>(), 0..24)), 0..40)) {
        let mut machine = KvStateMachine::new(KvLimits::default()).unwrap();
        for (slot, bytes) in steps {
            let last = machine.last_applied_slot();
            let response = machine.apply(slot, &bytes);
            if slot <= last {
                prop_assert_eq!(response, Response::Error(KvError::SlotReplayed { slot, last }));
                prop_assert_eq!(machine.last_applied_slot(), last);
            } else {
                prop_assert_eq!(machine.last_applied_slot(), slot);
            }
        }
    }
}

// ---- session table -----------------------------------------------------------------------

/// Was `assert!(limits.validate().is_ok())` in `SessionTable::new`.
#[test]
fn session_table_new_with_invalid_limits_is_an_error() {
    let limits = SessionLimits {
        sessions_max: 0,
        ..SessionLimits::default()
    };
    assert!(SessionTable::<Bytes>::new(limits).is_err());
}

/// Were the asserts of `advance_index` (index going backwards), `close`, `expire_inactive`
/// (between check and record) and `record` (no matching check): now `SessionError`s, and
/// the table is unchanged.
#[test]
fn session_table_misuse_is_an_error_and_changes_nothing() {
    let mut table = SessionTable::<Bytes>::new(SessionLimits::default()).unwrap();
    let client = table.open(10).unwrap().client;
    let unchanged = table.clone();

    // An index below one already passed in.
    assert_eq!(
        table.open(9),
        Err(SessionError::IndexBehind { index: 9, last: 10 })
    );
    assert_eq!(
        table.check(header(client, 1), 9),
        Outcome::Misuse(SessionError::IndexBehind { index: 9, last: 10 })
    );
    assert_eq!(
        table.execute(header(client, 1), 9, || Bytes::from("never")),
        Err(Outcome::Misuse(SessionError::IndexBehind {
            index: 9,
            last: 10
        }))
    );
    // A record no check asked for.
    assert_eq!(
        table.record(header(client, 1), Bytes::new()),
        Err(SessionError::NotAwaited {
            request: header(client, 1)
        })
    );
    assert_eq!(table, unchanged);

    // Between a New check and its record, every other call is refused.
    let pending = header(client, 1);
    assert_eq!(table.check(pending, 11), Outcome::New);
    let mid = table.clone();
    let awaiting = SessionError::AwaitingRecord { pending };
    assert_eq!(table.open(12), Err(awaiting));
    assert_eq!(table.close(client), Err(awaiting));
    assert_eq!(table.expire_inactive(100), Err(awaiting));
    assert_eq!(
        table.check(header(client, 2), 12),
        Outcome::Misuse(awaiting)
    );
    assert_eq!(
        table.record(header(client, 2), Bytes::new()),
        Err(SessionError::NotAwaited {
            request: header(client, 2)
        })
    );
    // Saving mid-apply is the serializer's error, not a panic.
    assert!(bincode::serde::encode_to_vec(&table, bincode::config::standard()).is_err());
    assert_eq!(table, mid);
    // The right record still goes through.
    table.record(pending, Bytes::from("done")).unwrap();
    assert_eq!(
        table.check(pending, 12),
        Outcome::Duplicate(Bytes::from("done"))
    );
}

/// The serialized form of a session table (same fields, same order as the crate's).
#[derive(Serialize)]
struct TableState {
    limits: SessionLimits,
    next_client: u64,
    last_index: u64,
    sessions: BTreeMap<ClientId, ()>,
}

/// A table restored with `next_client == CLIENT_IDS_MAX` (it loads) opened one more session,
/// which made a table whose snapshot no longer loads (lost data); `checked_add(..).expect`
/// was the panic behind it for `u64::MAX`. Now `open` refuses with `IdsExhausted`.
#[test]
fn session_ids_exhausted_is_an_error_and_the_snapshot_still_loads() {
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(
        TableState {
            limits: SessionLimits::default(),
            next_client: CLIENT_IDS_MAX,
            last_index: 3,
            sessions: BTreeMap::new(),
        },
        config,
    )
    .unwrap();
    let (mut table, _): (SessionTable<Bytes>, usize) =
        bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(table.open(4), Err(SessionError::IdsExhausted));
    let saved = bincode::serde::encode_to_vec(&table, config).unwrap();
    let reloaded: Result<(SessionTable<Bytes>, usize), _> =
        bincode::serde::decode_from_slice(&saved, config);
    assert!(reloaded.is_ok(), "the table's own snapshot must load");
}

// ---- simulation --------------------------------------------------------------------------

/// Was `assert!(config.nodes >= 1 && total <= 64)` and `.expect("valid replica config")` in
/// `Simulation::new`.
#[test]
fn simulation_with_a_bad_config_is_an_error() {
    for (nodes, spare) in [(0, 0), (65, 0), (60, 5), (3, usize::MAX)] {
        let mut config = SimConfig::new(nodes, 1);
        config.spare_nodes = spare;
        assert!(
            matches!(Simulation::new(config), Err(SimSetupError::Config(_))),
            "{nodes} + {spare} nodes"
        );
    }
    let mut config = SimConfig::new(3, 1);
    config.replica.heartbeat_ticks = 0;
    assert!(matches!(
        Simulation::new(config),
        Err(SimSetupError::Config(_))
    ));
    assert!(Simulation::new(SimConfig::new(3, 1)).is_ok());
}

// ---- 2PC participant floors --------------------------------------------------------------

const PARTICIPANT: NodeId = NodeId(1000);

fn vote_request(coordinator: NodeId, txn: u64) -> Message {
    Message {
        txn: TxnId(txn),
        from: coordinator,
        to: PARTICIPANT,
        body: Body::VoteRequest {
            payload: Bytes::from("part"),
        },
    }
}

/// What one vote request led to.
struct Handled {
    /// The application was asked (and voted no).
    asked: bool,
    messages: Vec<Message>,
    records: Vec<ParticipantRecord>,
}

/// Steps a vote request and votes no on it if the application is asked.
fn handle(participant: &mut Participant, coordinator: NodeId, txn: u64) -> Handled {
    participant.step(vote_request(coordinator, txn)).unwrap();
    let mut ready = participant.ready();
    let asked = ready
        .take_events()
        .into_iter()
        .any(|event| matches!(event, ParticipantEvent::VoteRequested { .. }));
    let mut messages = ready.take_messages();
    let mut records = ready.take_records();
    if asked {
        participant.vote(TxnId(txn), false).unwrap();
        let mut ready = participant.ready();
        messages.extend(ready.take_messages());
        records.extend(ready.take_records());
    }
    Handled {
        asked,
        messages,
        records,
    }
}

fn request_and_refuse(participant: &mut Participant, coordinator: NodeId, txn: u64) -> bool {
    handle(participant, coordinator, txn).asked
}

/// `floors` held one floor per coordinator id ever seen: vote requests from many made-up
/// coordinators grew it without bound. Now at most `coordinators_max` coordinators are served;
/// a request from another is answered no at once, remembering nothing.
#[test]
fn participant_floors_are_bounded() {
    let mut config = ParticipantConfig::new(PARTICIPANT);
    config.finished_remembered = 0; // every finished transaction raises a floor at once
    config.coordinators_max = 4;
    let mut participant = Participant::new(config).unwrap();
    let mut floors_handed_out = 0;
    for coordinator in 1..=100u64 {
        let handled = handle(&mut participant, NodeId(coordinator), 7);
        assert_eq!(handled.asked, coordinator <= 4, "coordinator {coordinator}");
        floors_handed_out += handled
            .records
            .iter()
            .filter(|record| matches!(record, ParticipantRecord::Floor { .. }))
            .count();
        // Either way a no vote went out; refused ones remember nothing.
        assert_eq!(handled.messages.len(), 1);
        assert_eq!(handled.messages[0].body, Body::Vote { yes: false });
        if coordinator > 4 {
            assert!(handled.records.is_empty());
            assert_eq!(participant.floor(NodeId(coordinator)), None);
        }
    }
    assert_eq!(participant.coordinators_served(), 4);
    assert_eq!(floors_handed_out, 4);
    assert_eq!(participant.refusals().coordinators_max, 96);
    // A served coordinator is still served, and its floor still answers no to a duplicate.
    assert!(request_and_refuse(&mut participant, NodeId(2), 8));
    assert!(!request_and_refuse(&mut participant, NodeId(2), 7));
    assert_eq!(participant.floor(NodeId(2)), Some(TxnId(8)));
}

/// A participant recovered with more floors than `coordinators_max` keeps every one of them
/// (a floor is never dropped) and serves only those coordinators.
#[test]
fn recovered_floors_are_never_dropped() {
    let mut config = ParticipantConfig::new(PARTICIPANT);
    config.coordinators_max = 2;
    let records = (1..=5u64).map(|coordinator| ParticipantRecord::Floor {
        coordinator: NodeId(coordinator),
        txn: TxnId(10),
    });
    let mut participant = Participant::recover(config, records).unwrap();
    for coordinator in 1..=5u64 {
        assert_eq!(participant.floor(NodeId(coordinator)), Some(TxnId(10)));
        assert!(!request_and_refuse(
            &mut participant,
            NodeId(coordinator),
            9
        ));
        assert!(request_and_refuse(
            &mut participant,
            NodeId(coordinator),
            10 + coordinator
        ));
    }
    assert!(!request_and_refuse(&mut participant, NodeId(6), 20));
}

/// The configured coordinator group is always served, whatever the bound.
#[test]
fn configured_coordinators_are_always_served() {
    let mut config = ParticipantConfig::new(PARTICIPANT);
    config.coordinators = vec![NodeId(1), NodeId(2)];
    config.coordinators_max = 1;
    let mut participant = Participant::new(config).unwrap();
    assert!(request_and_refuse(&mut participant, NodeId(3), 1));
    assert!(!request_and_refuse(&mut participant, NodeId(4), 1));
    assert!(request_and_refuse(&mut participant, NodeId(1), 2));
    assert!(request_and_refuse(&mut participant, NodeId(2), 3));
    let mut zero = ParticipantConfig::new(PARTICIPANT);
    zero.coordinators_max = 0;
    assert!(Participant::new(zero).is_err());
}
