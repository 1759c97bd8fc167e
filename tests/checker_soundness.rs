//! Are the simulator's checkers sound (they never flag a legal run) and complete (they flag
//! every illegal one they claim to)?
//!
//! - The linearizability checker ([`synod::sim::linearizability`]) is compared, on small
//!   histories (up to seven operations on one or two keys, two values), with a brute-force
//!   oracle written here from the definition alone: try every order of the operations that
//!   respects real time, with each pending operation either taking effect somewhere after its
//!   invocation or never, and run it on a sequential key-value store written here too. The
//!   histories are arbitrary (random intervals, outputs and pending operations, with equal and
//!   zero-length intervals), serial runs with overlapping intervals (linearizable by
//!   construction) and serial runs with one mutation. Every verdict must be the oracle's; a
//!   step budget may turn a verdict into `Unknown`, never into the other verdict.
//! - Its edge cases: empty histories, zero-length operations, returns before invocations (a
//!   `HistoryError`), times at `u64::MAX`, and huge histories that must end in the documented
//!   bounded result.
//! - The 2PC and lock worlds ([`synod::sim::twopc`], [`synod::sim::locks`]) with their
//!   deliberate bugs and legal-but-busy configurations (the checkers of the Paxos world and
//!   the ones reachable only inside the crate are tested in `src/sim`).

use bytes::Bytes;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use synod::kv::{Operation as KvOperation, Output as KvOutput};
use synod::sim::linearizability::{
    check, CheckOptions, CheckResult, Completion, HistoryError, KvModel, Operation,
};

type History = Vec<Operation<KvOperation, KvOutput>>;

// ---------------------------------------------------------------------------------------------
// The oracle: linearizability by exhaustive search, from the definition.
// ---------------------------------------------------------------------------------------------

/// A sequential key-value store, written from the documentation of `synod::kv`, not from
/// `KvModel`: absent keys are `None`, an append to an absent key appends to the empty value.
fn run_sequentially(store: &mut BTreeMap<Bytes, Bytes>, operation: &KvOperation) -> KvOutput {
    match operation {
        KvOperation::Get { key } => KvOutput::Value(store.get(key).cloned()),
        KvOperation::Put { key, value } => {
            store.insert(key.clone(), value.clone());
            KvOutput::Written
        }
        KvOperation::Delete { key } => KvOutput::Deleted(store.remove(key).is_some()),
        KvOperation::Append { key, value } => {
            let mut joined = store.get(key).map(|v| v.to_vec()).unwrap_or_default();
            joined.extend_from_slice(value);
            let length_bytes = joined.len() as u64;
            store.insert(key.clone(), Bytes::from(joined));
            KvOutput::Appended { length_bytes }
        }
        KvOperation::CompareAndSwap { key, expected, new } => {
            if store.get(key) != expected.as_ref() {
                return KvOutput::Swapped(false);
            }
            match new {
                Some(new) => store.insert(key.clone(), new.clone()),
                None => store.remove(key),
            };
            KvOutput::Swapped(true)
        }
    }
}

fn return_time(operation: &Operation<KvOperation, KvOutput>) -> Option<u64> {
    match operation.completion {
        Completion::Returned { time, .. } => Some(time),
        Completion::Pending => None,
    }
}

/// Whether `a` precedes `b` in real time: `a` returned strictly before `b` was invoked (a
/// pending operation precedes nothing).
fn precedes(a: &Operation<KvOperation, KvOutput>, b: &Operation<KvOperation, KvOutput>) -> bool {
    return_time(a).is_some_and(|time| time < b.invoke_time)
}

/// Whether some order of the completed operations and some of the pending ones, respecting
/// real time, is a run of the sequential store giving every completed operation its output.
/// Exhaustive and unpartitioned (so it checks the checker's split by key too).
fn oracle_linearizable(history: &History) -> bool {
    assert!(history.len() <= 16, "the oracle is exponential");
    let count = history.len();
    let predecessors: Vec<u32> = (0..count)
        .map(|b| {
            (0..count)
                .filter(|&a| a != b && precedes(&history[a], &history[b]))
                .fold(0, |mask, a| mask | 1 << a)
        })
        .collect();
    let completed: u32 = (0..count)
        .filter(|&index| return_time(&history[index]).is_some())
        .fold(0, |mask, index| mask | 1 << index);

    fn search(
        history: &History,
        predecessors: &[u32],
        completed: u32,
        placed: u32,
        store: &BTreeMap<Bytes, Bytes>,
    ) -> bool {
        if placed & completed == completed {
            // Pending operations not placed never took effect.
            return true;
        }
        (0..history.len()).any(|index| {
            let bit = 1 << index;
            if placed & bit != 0 || predecessors[index] & !placed != 0 {
                return false;
            }
            let mut next = store.clone();
            let output = run_sequentially(&mut next, &history[index].input);
            if let Completion::Returned { output: seen, .. } = &history[index].completion {
                if *seen != output {
                    return false;
                }
            }
            search(history, predecessors, completed, placed | bit, &next)
        })
    }
    search(history, &predecessors, completed, 0, &BTreeMap::new())
}

/// Checks a violation report against the history: the prefix is a legal start of a
/// linearization of its partition, and the blocked operation is a completed one of that
/// partition, outside the prefix, shown in the window.
fn check_report(history: &History, violation: &synod::sim::linearizability::Violation) {
    let blocked = violation.blocked_operation;
    assert!(blocked < history.len(), "{violation}");
    assert!(return_time(&history[blocked]).is_some(), "{violation}");
    assert!(violation.window.contains(&blocked), "{violation}");
    assert!(
        !violation.linearized_prefix.contains(&blocked),
        "{violation}"
    );
    let key = history[blocked].input.key().clone();
    let partition: Vec<usize> = (0..history.len())
        .filter(|&index| *history[index].input.key() == key)
        .collect();
    assert_eq!(violation.partition_operations, partition.len());
    let mut store = BTreeMap::new();
    for (position, &index) in violation.linearized_prefix.iter().enumerate() {
        assert_eq!(*history[index].input.key(), key, "{violation}");
        // Everything of the partition that must come before it is already in the prefix.
        for &before in &partition {
            if precedes(&history[before], &history[index]) {
                assert!(
                    violation.linearized_prefix[..position].contains(&before),
                    "#{index} is linearized before #{before}, which returned before it began:\n{violation}"
                );
            }
        }
        let output = run_sequentially(&mut store, &history[index].input);
        if let Completion::Returned { output: seen, .. } = &history[index].completion {
            assert_eq!(*seen, output, "the prefix is not a legal run:\n{violation}");
        }
    }
    // The report prints (and names the partition).
    let report = violation.to_string();
    assert!(report.contains("not linearizable"), "{report}");
}

/// The checker's verdict must be the oracle's.
fn assert_agrees_with_oracle(history: &History) {
    let expected = oracle_linearizable(history);
    let result = check(&KvModel, history, &CheckOptions::default()).expect("well formed");
    match &result {
        CheckResult::Linearizable => assert!(
            expected,
            "the checker accepted a history the oracle refuses: {history:#?}"
        ),
        CheckResult::Violation(violation) => {
            assert!(
                !expected,
                "the checker refused a linearizable history: {violation}\n{history:#?}"
            );
            check_report(history, violation);
        }
        CheckResult::Unknown(unknown) => {
            panic!("a seven-operation history exhausted the default budget: {unknown}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn get(key: &str) -> KvOperation {
    KvOperation::Get { key: bytes(key) }
}

fn put(key: &str, value: &str) -> KvOperation {
    KvOperation::Put {
        key: bytes(key),
        value: bytes(value),
    }
}

fn append(key: &str, value: &str) -> KvOperation {
    KvOperation::Append {
        key: bytes(key),
        value: bytes(value),
    }
}

fn value(value: Option<&str>) -> KvOutput {
    KvOutput::Value(value.map(bytes))
}

fn returned(
    client: u64,
    interval: (u64, u64),
    input: KvOperation,
    output: KvOutput,
) -> Operation<KvOperation, KvOutput> {
    Operation::returned(client, interval.0, interval.1, input, output)
}

/// Operations on one or two keys with two values, so that they conflict.
fn arbitrary_operation(keys: u8) -> impl Strategy<Value = KvOperation> {
    let key = (0..keys).prop_map(|key| Bytes::from(vec![b'x' + key]));
    let value = prop_oneof![Just(bytes("a")), Just(bytes("b"))];
    let maybe_value = proptest::option::of(value.clone());
    (0u8..6, key, value, maybe_value.clone(), maybe_value).prop_map(
        |(kind, key, value, expected, new)| match kind {
            0 | 1 => KvOperation::Get { key },
            2 => KvOperation::Put { key, value },
            3 => KvOperation::Delete { key },
            4 => KvOperation::Append { key, value },
            _ => KvOperation::CompareAndSwap { key, expected, new },
        },
    )
}

/// Any output at all: mostly of the operation's kind, with values a short run of appends and
/// puts could produce, and now and then one of another kind (which no run gives).
fn arbitrary_output() -> impl Strategy<Value = KvOutput> {
    let read = proptest::option::of(prop_oneof![
        Just("a"),
        Just("b"),
        Just("aa"),
        Just("ab"),
        Just("ba"),
        Just("bb"),
    ]);
    prop_oneof![
        read.prop_map(value),
        Just(KvOutput::Written),
        any::<bool>().prop_map(KvOutput::Deleted),
        (1u64..4).prop_map(|length_bytes| KvOutput::Appended { length_bytes }),
        any::<bool>().prop_map(KvOutput::Swapped),
    ]
}

/// Arbitrary histories: random intervals on a short clock (so equal and zero-length
/// intervals are common), random outputs, one operation in five pending.
fn arbitrary_history() -> impl Strategy<Value = History> {
    let operation = (
        arbitrary_operation(2),
        0u64..12,
        0u64..6,
        arbitrary_output(),
        0u8..5,
        0u64..4,
    )
        .prop_map(|(input, invoke_time, length, output, fate, client)| {
            if fate == 0 {
                Operation::pending(client, invoke_time, input)
            } else {
                Operation::returned(client, invoke_time, invoke_time + length, input, output)
            }
        });
    proptest::collection::vec(operation, 0..=7)
}

/// How one operation of a serial run ends up in the history.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Took effect and returned.
    Returned,
    /// Took effect; the response was lost.
    EffectLost,
    /// Never took effect; the response was lost.
    Vanished,
}

/// A serial run on one or two keys, each operation given an interval around its instant:
/// linearizable by construction.
fn serial_history() -> impl Strategy<Value = History> {
    let fate = prop_oneof![
        6 => Just(Fate::Returned),
        1 => Just(Fate::EffectLost),
        1 => Just(Fate::Vanished),
    ];
    let keys = 1u8..=2;
    keys.prop_flat_map(move |keys| {
        proptest::collection::vec(
            (
                arbitrary_operation(keys),
                fate.clone(),
                0u64..8,
                0u64..8,
                0u64..4,
            ),
            0..=7,
        )
    })
    .prop_map(|steps| {
        let mut store = BTreeMap::new();
        steps
            .into_iter()
            .enumerate()
            .map(|(position, (input, fate, before, after, client))| {
                // Instants 3 apart, intervals up to 7 either side: neighbours overlap often.
                let instant = 10 + 3 * position as u64;
                let invoke_time = instant - before;
                match fate {
                    Fate::Returned => {
                        let output = run_sequentially(&mut store, &input);
                        Operation::returned(client, invoke_time, instant + after, input, output)
                    }
                    Fate::EffectLost => {
                        run_sequentially(&mut store, &input);
                        Operation::pending(client, invoke_time, input)
                    }
                    Fate::Vanished => Operation::pending(client, invoke_time, input),
                }
            })
            .collect()
    })
}

/// One change to a history, which may or may not keep it linearizable.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace an operation's output.
    Output(proptest::sample::Index, KvOutput),
    /// Move an operation's interval (keeping it well formed).
    Shift(proptest::sample::Index, u64, u64),
    /// Make a completed operation pending, or a pending one return `output` at once.
    Flip(proptest::sample::Index, KvOutput),
    /// Exchange the outputs of two operations.
    Swap(proptest::sample::Index, proptest::sample::Index),
}

fn arbitrary_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<proptest::sample::Index>(), arbitrary_output())
            .prop_map(|(index, output)| Mutation::Output(index, output)),
        (any::<proptest::sample::Index>(), 0u64..40, 0u64..8)
            .prop_map(|(index, start, length)| Mutation::Shift(index, start, length)),
        (any::<proptest::sample::Index>(), arbitrary_output())
            .prop_map(|(index, output)| Mutation::Flip(index, output)),
        (
            any::<proptest::sample::Index>(),
            any::<proptest::sample::Index>()
        )
            .prop_map(|(a, b)| Mutation::Swap(a, b)),
    ]
}

fn mutate(history: &mut History, mutation: &Mutation) {
    let count = history.len();
    if count == 0 {
        return;
    }
    match mutation {
        Mutation::Output(index, output) => {
            if let Completion::Returned { output: old, .. } =
                &mut history[index.index(count)].completion
            {
                *old = output.clone();
            }
        }
        Mutation::Shift(index, start, length) => {
            let operation = &mut history[index.index(count)];
            operation.invoke_time = *start;
            if let Completion::Returned { time, .. } = &mut operation.completion {
                *time = start + length;
            }
        }
        Mutation::Flip(index, output) => {
            let operation = &mut history[index.index(count)];
            operation.completion = match &operation.completion {
                Completion::Returned { .. } => Completion::Pending,
                Completion::Pending => Completion::Returned {
                    time: operation.invoke_time,
                    output: output.clone(),
                },
            };
        }
        Mutation::Swap(a, b) => {
            let (a, b) = (a.index(count), b.index(count));
            if let (
                Completion::Returned { output: first, .. },
                Completion::Returned { output: second, .. },
            ) = (history[a].completion.clone(), history[b].completion.clone())
            {
                if let Completion::Returned { output, .. } = &mut history[a].completion {
                    *output = second;
                }
                if let Completion::Returned { output, .. } = &mut history[b].completion {
                    *output = first;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("SYNOD_CHECKER_CASES").map_or(2_000, |n| n.parse().unwrap())
    ))]

    /// Arbitrary small histories: the checker's verdict is the oracle's.
    #[test]
    fn linearizability_verdicts_match_the_oracle_on_arbitrary_histories(
        history in arbitrary_history(),
    ) {
        assert_agrees_with_oracle(&history);
    }

    /// Serial runs are accepted, and the oracle agrees they are linearizable (a check of
    /// the oracle itself).
    #[test]
    fn serial_runs_with_overlapping_intervals_are_linearizable(history in serial_history()) {
        prop_assert!(oracle_linearizable(&history));
        assert_agrees_with_oracle(&history);
    }

    /// Serial runs with one or two mutations: often no longer linearizable, sometimes still
    /// (a swapped pair of equal outputs, an interval moved where the order still fits).
    #[test]
    fn linearizability_verdicts_match_the_oracle_on_mutated_serial_runs(
        mut history in serial_history(),
        mutations in proptest::collection::vec(arbitrary_mutation(), 1..=2),
    ) {
        for mutation in &mutations {
            mutate(&mut history, mutation);
        }
        assert_agrees_with_oracle(&history);
    }

    /// A step budget too small to decide turns the verdict into `Unknown`, never into the
    /// other verdict, and the steps it reports are within the budget.
    #[test]
    fn a_small_step_budget_gives_the_oracles_verdict_or_unknown(
        history in prop_oneof![arbitrary_history(), serial_history()],
        steps_max in 0u64..40,
    ) {
        let expected = oracle_linearizable(&history);
        let options = CheckOptions {
            steps_max,
            ..CheckOptions::default()
        };
        match check(&KvModel, &history, &options).expect("well formed") {
            CheckResult::Linearizable => prop_assert!(expected),
            CheckResult::Violation(violation) => {
                prop_assert!(!expected, "{}", violation);
                check_report(&history, &violation);
            }
            CheckResult::Unknown(unknown) => prop_assert!(unknown.steps <= steps_max),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge cases of the linearizability checker.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_empty_history_and_one_of_pending_operations_only_are_linearizable_at_any_budget() {
    let pending = vec![
        Operation::pending(1, 0, put("x", "a")),
        Operation::pending(2, 5, get("y")),
    ];
    for steps_max in [0, 1, u64::MAX] {
        let options = CheckOptions {
            steps_max,
            ..CheckOptions::default()
        };
        assert_eq!(
            check(&KvModel, &Vec::new(), &options),
            Ok(CheckResult::Linearizable)
        );
        // Nothing returned, so nothing needs to have taken effect: no search at all.
        assert_eq!(
            check(&KvModel, &pending, &options),
            Ok(CheckResult::Linearizable)
        );
    }
}

#[test]
fn zero_length_operations_at_the_same_instant_are_concurrent() {
    // A read at instant 5 and a put at instant 5: either order is possible.
    for read in [None, Some("a")] {
        let history = vec![
            returned(1, (5, 5), put("x", "a"), KvOutput::Written),
            returned(2, (5, 5), get("x"), value(read)),
        ];
        assert_agrees_with_oracle(&history);
        assert!(oracle_linearizable(&history));
    }
    // One instant later, the put precedes the read: absent is stale.
    let stale = vec![
        returned(1, (5, 5), put("x", "a"), KvOutput::Written),
        returned(2, (6, 6), get("x"), value(None)),
    ];
    assert_agrees_with_oracle(&stale);
    assert!(!oracle_linearizable(&stale));
}

#[test]
fn times_at_the_end_of_the_clock_are_ordinary_times() {
    // A return at u64::MAX must still come before the pending operations' "infinity", and a
    // call at u64::MAX is concurrent with it.
    let max = u64::MAX;
    let histories = [
        vec![
            returned(1, (max, max), put("x", "a"), KvOutput::Written),
            returned(2, (0, max), get("x"), value(Some("a"))),
            Operation::pending(3, max, put("x", "b")),
        ],
        vec![
            returned(1, (0, max - 1), put("x", "a"), KvOutput::Written),
            returned(2, (max, max), get("x"), value(None)),
            Operation::pending(3, max, KvOperation::Delete { key: bytes("x") }),
        ],
        vec![
            returned(1, (0, max - 1), put("x", "a"), KvOutput::Written),
            returned(2, (max, max), get("x"), value(None)),
        ],
    ];
    for history in &histories {
        assert_agrees_with_oracle(history);
    }
}

#[test]
fn a_return_before_its_invocation_is_a_history_error_wherever_it_is() {
    let mut history = vec![
        returned(1, (0, 10), put("x", "a"), KvOutput::Written),
        Operation::pending(2, 3, get("y")),
        returned(3, (7, 6), get("y"), value(None)),
        returned(4, (u64::MAX, 0), get("x"), value(None)),
    ];
    assert_eq!(
        check(&KvModel, &history, &CheckOptions::default()),
        Err(HistoryError::ReturnBeforeInvoke {
            operation: 2,
            invoke_time: 7,
            return_time: 6
        })
    );
    // Even with no budget at all: the history is refused before any search.
    history.remove(2);
    let options = CheckOptions {
        steps_max: 0,
        memo_bytes_max: 0,
    };
    let error = check(&KvModel, &history, &options).unwrap_err();
    assert!(
        error.to_string().contains("before its invocation"),
        "{error}"
    );
}

#[test]
fn a_long_run_with_one_concurrent_read_is_decided_within_the_default_budget() {
    // Two hundred appends one after another, and a read concurrent with all of them that
    // saw them all: the search must place the read at the end without running out of its
    // default budget.
    let mut history = vec![];
    let mut seen = String::new();
    for client in 0..200u64 {
        let letter = if client % 2 == 0 { "a" } else { "b" };
        seen.push_str(letter);
        history.push(returned(
            client,
            (2 * client, 2 * client + 1),
            append("x", letter),
            KvOutput::Appended {
                length_bytes: client + 1,
            },
        ));
    }
    history.push(returned(999, (0, 1000), get("x"), value(Some(&seen))));
    assert!(check(&KvModel, &history, &CheckOptions::default())
        .unwrap()
        .is_linearizable());
    // One letter off in the read: a violation, found without exhausting the budget either.
    seen.replace_range(100..101, "c");
    *history.last_mut().unwrap() = returned(999, (0, 1000), get("x"), value(Some(&seen)));
    assert!(matches!(
        check(&KvModel, &history, &CheckOptions::default()).unwrap(),
        CheckResult::Violation(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// Memory: the bounded result must come before the machine's memory runs out.
// ---------------------------------------------------------------------------------------------

/// Counts the bytes the current thread holds and, when given a limit, refuses to go past it
/// (the allocation fails and the process aborts, rather than filling a shared machine).
struct ThreadBudget;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LIMIT: Cell<isize> = const { Cell::new(0) };
}

fn held_change(delta: isize) -> bool {
    HELD.try_with(|held| {
        let now = held.get() + delta;
        let limit = LIMIT.with(Cell::get);
        if delta > 0 && limit > 0 && now > limit {
            return false;
        }
        held.set(now);
        PEAK.with(|peak| peak.set(peak.get().max(now)));
        true
    })
    .unwrap_or(true)
}

unsafe impl GlobalAlloc for ThreadBudget {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !held_change(layout.size() as isize) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        held_change(-(layout.size() as isize));
        System.dealloc(pointer, layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !held_change(new_size as isize - layout.size() as isize) {
            return std::ptr::null_mut();
        }
        System.realloc(pointer, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: ThreadBudget = ThreadBudget;

const MIB: isize = 1 << 20;

/// Bug: the checker's memory was bounded only through the step budget ("the memo table grows
/// by at most one entry per step"), but an entry holds a bit per operation of the partition:
/// with the default budget of ten million steps, a search over 65 536 concurrent operations
/// stores up to ten million 8 KiB sets (80 GB) before it answers `Unknown`. Before
/// `CheckOptions::memo_bytes_max` this test died at its 1.5 GiB allowance (the allocation
/// fails and the process aborts: "memory allocation of 8200 bytes failed"); with it, the
/// search gives up at the default 1 GiB memo.
#[test]
fn a_huge_undecidable_history_gives_up_within_the_default_memory_budget() {
    // Every put is pending and concurrent; the one read saw a value nobody wrote, which the
    // search can only learn by trying subsets of the puts, every one a new memo entry.
    let operations = 1 << 16;
    let mut history = vec![returned(0, (0, 1), get("x"), value(Some("never written")))];
    for client in 1..=operations {
        history.push(Operation::pending(client, 0, put("x", "a")));
    }
    let before = HELD.with(Cell::get);
    LIMIT.with(|limit| limit.set(before + 1536 * MIB));
    PEAK.with(|peak| peak.set(before));
    let result = check(&KvModel, &history, &CheckOptions::default()).unwrap();
    LIMIT.with(|limit| limit.set(0));
    let peak = PEAK.with(Cell::get) - before;
    eprintln!("{result}; peak {} MiB", peak / MIB);
    match result {
        CheckResult::Unknown(unknown) => {
            assert!(
                unknown.steps < CheckOptions::default().steps_max,
                "{unknown}"
            );
        }
        other => panic!("expected the search to give up, got {other}"),
    }
    assert!(peak < 1536 * MIB);
}

// ---------------------------------------------------------------------------------------------
// The 2PC and lock worlds: legal but busy runs are not flagged.
// ---------------------------------------------------------------------------------------------

#[test]
fn twopc_aborts_after_no_votes_are_not_flagged() {
    use synod::sim::twopc::{run, TwoPcConfig};
    // Participants vote no now and then even without faults: those transactions abort,
    // others commit, and no checker objects.
    let mut aborted = 0;
    let mut committed = 0;
    for seed in 0..10 {
        let config = TwoPcConfig {
            faults: false,
            ..TwoPcConfig::new(seed)
        };
        let stats = run(&config).unwrap_or_else(|violation| panic!("{violation}"));
        aborted += stats.aborted;
        committed += stats.committed;
    }
    assert!(aborted > 0 && committed > 0, "{aborted} {committed}");
}

#[test]
fn locks_regranted_after_expiry_with_larger_tokens_are_not_flagged() {
    use synod::sim::locks::{run, LocksConfig};
    // Stalled clients' sessions expire and the lock goes to the next client, with a larger
    // token (the fencing checker requires it): legal, and frequent within these seeds.
    let mut expiries = 0;
    let mut grants = 0;
    for seed in 0..20 {
        let stats = run(&LocksConfig::new(seed)).unwrap_or_else(|violation| panic!("{violation}"));
        expiries += stats.expiries;
        grants += stats.grants;
    }
    assert!(expiries > 0 && grants > expiries, "{expiries} {grants}");
}

/// The differential tests mean something only if the generators give both verdicts: count
/// them on a fixed sample.
#[test]
fn the_generated_histories_are_both_linearizable_and_not() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mutated = (serial_history(), arbitrary_mutation()).prop_map(|(mut history, mutation)| {
        mutate(&mut history, &mutation);
        history
    });
    let strategies: [(&str, BoxedStrategy<History>); 2] = [
        ("arbitrary", arbitrary_history().boxed()),
        ("mutated", mutated.boxed()),
    ];
    for (name, strategy) in strategies {
        let linearizable = (0..1000)
            .filter(|_| oracle_linearizable(&strategy.new_tree(&mut runner).unwrap().current()))
            .count();
        assert!(
            (150..=850).contains(&linearizable),
            "{name}: {linearizable} of 1000 linearizable"
        );
    }
}
