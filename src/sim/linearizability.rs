//! A linearizability checker for client histories.
//!
//! A history is linearizable if every operation can be given a single instant, between its
//! invocation and its return, at which it takes effect, such that the operations in that order
//! are a legal run of a sequential [`Model`] producing the outputs the clients observed.
//!
//! The search is Wing and Gong's, with the memoization of Lowe (as in Porcupine): operations
//! are linearized depth-first in the order of a doubly linked list of call and return events,
//! and a configuration already explored — the same set of linearized operations reaching the
//! same model state — is never explored again. Histories are first split by
//! [`Model::partition_key`] (linearizability is compositional: a history is linearizable iff
//! each key's sub-history is), which keeps each search small.
//!
//! An operation that never returned (the client crashed or timed out) is
//! [`Completion::Pending`]: it may have taken effect at any instant after its invocation, or
//! not at all. An operation the system definitely refused (not applied) should simply be left
//! out of the history.
//!
//! The search is exponential in the worst case, so it is bounded by
//! [`CheckOptions::steps_max`]; past it the answer is [`CheckResult::Unknown`], never a hang.
//! The memo table grows by at most one entry per step, but an entry holds a set of the
//! partition's operations and a model state, so its size grows with the history: the table is
//! also bounded, by [`CheckOptions::memo_bytes_max`], past which the answer is `Unknown` too
//! (without it, a search over a partition of a few thousand operations could fill the
//! machine's memory long before running out of steps).
//!
//! [`KvModel`] is the model of [`crate::kv`]; implement [`Model`] to check another state machine.

use crate::kv::{write_quoted, Operation as KvOperation, Output as KvOutput};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::Hash;
use thiserror::Error;

/// A sequential specification: the state machine a linearizable history must be a run of.
///
/// The model must be deterministic: for a state, an input and an observed output, at most one
/// next state.
pub trait Model {
    /// The model's state. Hashed and compared for memoization, so keep it small.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// What a client asked for.
    type Input: fmt::Debug;
    /// What the client observed.
    type Output: fmt::Debug;
    /// Operations with different keys never interact and are checked separately. Use `()` if
    /// the model cannot be partitioned.
    type PartitionKey: Ord + Clone + fmt::Debug;

    /// The state before any operation (of one partition).
    fn initial_state(&self) -> Self::State;

    /// The partition an operation belongs to.
    fn partition_key(&self, input: &Self::Input) -> Self::PartitionKey;

    /// Applies `input` to `state`. With `Some(output)`, returns the next state if the model
    /// could have produced `output`, or `None` if it could not. With `None` (the output was
    /// never observed), returns the state the operation leads to, whatever it answered; `None`
    /// only if the input is impossible in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// The bytes `state` holds on the heap (not counting `size_of::<Self::State>()`), for
    /// [`CheckOptions::memo_bytes_max`]. The default, 0, is right for states without heap
    /// data; a model whose states own buffers should count them.
    fn state_heap_bytes(&self, state: &Self::State) -> usize {
        let _ = state;
        0
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion<O> {
    /// The client received `output` at `time`.
    Returned {
        /// When the response arrived; not before the invocation.
        time: u64,
        /// What the client observed.
        output: O,
    },
    /// The client never received a response: the operation may have taken effect at any time
    /// after its invocation, or never.
    Pending,
}

/// One operation in a history.
///
/// Times come from any clock shared by all clients (simulated ticks, a global event counter).
/// Operation A precedes operation B only if A returned strictly before B was invoked; equal
/// times count as concurrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that ran it; used only in reports.
    pub client: u64,
    /// When the client sent it.
    pub invoke_time: u64,
    /// What the client asked for.
    pub input: I,
    /// How it ended.
    pub completion: Completion<O>,
}

impl<I, O> Operation<I, O> {
    /// An operation that returned `output` at `return_time`.
    pub fn returned(client: u64, invoke_time: u64, return_time: u64, input: I, output: O) -> Self {
        Operation {
            client,
            invoke_time,
            input,
            completion: Completion::Returned {
                time: return_time,
                output,
            },
        }
    }

    /// An operation that never returned.
    pub fn pending(client: u64, invoke_time: u64, input: I) -> Self {
        Operation {
            client,
            invoke_time,
            input,
            completion: Completion::Pending,
        }
    }

    fn output(&self) -> Option<&O> {
        match &self.completion {
            Completion::Returned { output, .. } => Some(output),
            Completion::Pending => None,
        }
    }

    fn return_time(&self) -> Option<u64> {
        match &self.completion {
            Completion::Returned { time, .. } => Some(*time),
            Completion::Pending => None,
        }
    }
}

/// Bounds on the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps over all partitions before giving up with [`CheckResult::Unknown`].
    pub steps_max: u64,
    /// Bytes the memo table of one partition's search may hold: once it holds more, the
    /// search gives up with [`CheckResult::Unknown`]. An estimate of what the entries hold: each entry counts its
    /// slot in the table, its set of operations (a bit per operation of the partition) and
    /// [`Model::state_heap_bytes`] of its state; the table's spare capacity can add up to as
    /// much again. Default 1 GiB, which histories of up to a few hundred operations per
    /// partition do not reach within the default step budget.
    pub memo_bytes_max: u64,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            steps_max: 10_000_000,
            memo_bytes_max: 1 << 30,
        }
    }
}

/// The history itself is malformed; fix the code that records it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// An operation returned before it was invoked.
    #[error(
        "operation #{operation} returns at {return_time}, before its invocation at {invoke_time}"
    )]
    ReturnBeforeInvoke {
        /// Index of the operation in the history.
        operation: usize,
        /// Its invocation time.
        invoke_time: u64,
        /// Its return time.
        return_time: u64,
    },
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every partition has a linearization.
    Linearizable,
    /// Some partition has none; the report says which and where the search failed.
    Violation(Box<Violation>),
    /// No violation was found, but the step budget ran out first in the named partition
    /// (this is neither a pass nor a failure: shorten the history or raise the budget).
    Unknown(Unknown),
}

impl CheckResult {
    /// Whether the verdict is [`CheckResult::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Linearizable => write!(formatter, "linearizable"),
            CheckResult::Violation(violation) => write!(formatter, "{violation}"),
            CheckResult::Unknown(unknown) => write!(formatter, "{unknown}"),
        }
    }
}

/// The search ran out of steps or memo space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// The partition being searched when the budget ran out (its key, formatted).
    pub partition: String,
    /// The steps spent, over all partitions.
    pub steps: u64,
    /// Which budget ran out.
    pub exhausted: Budget,
}

/// A bound of [`CheckOptions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// [`CheckOptions::steps_max`].
    Steps,
    /// [`CheckOptions::memo_bytes_max`].
    MemoBytes,
}

impl fmt::Display for Unknown {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let budget = match self.exhausted {
            Budget::Steps => "step budget",
            Budget::MemoBytes => "memo budget",
        };
        write!(
            formatter,
            "linearizability unknown: {budget} exhausted after {} steps in partition {}",
            self.steps, self.partition
        )
    }
}

/// A partition whose sub-history has no linearization, with the point the search got stuck.
///
/// `Display` prints a compact, readable report: the partition, the end of the longest
/// linearizable prefix found, and the operations that could have come next, among which none
/// fits before the blocking operation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The partition's key, formatted.
    pub partition: String,
    /// How many operations the partition holds.
    pub partition_operations: usize,
    /// The longest linearizable prefix the search found: history indices in linearization
    /// order.
    pub linearized_prefix: Vec<usize>,
    /// The operation that had to take effect next (it returned before the rest were
    /// invoked), but that no candidate order could make fit.
    pub blocked_operation: usize,
    /// History indices of the operations shown in the report, in the order shown.
    pub window: Vec<usize>,
    report: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.report)
    }
}

/// Checks whether `history` is linearizable with respect to `model`.
///
/// Partitions are checked in key order. A violation in any partition is reported (the first
/// found) even if another partition ran out of budget; `Unknown` is returned only if no
/// partition failed and at least one was not decided.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    options: &CheckOptions,
) -> Result<CheckResult, HistoryError> {
    for (index, operation) in history.iter().enumerate() {
        if let Some(return_time) = operation.return_time() {
            if return_time < operation.invoke_time {
                return Err(HistoryError::ReturnBeforeInvoke {
                    operation: index,
                    invoke_time: operation.invoke_time,
                    return_time,
                });
            }
        }
    }

    let mut partitions: BTreeMap<M::PartitionKey, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        partitions
            .entry(model.partition_key(&operation.input))
            .or_default()
            .push(index);
    }

    let mut steps = 0;
    let mut unknown = None;
    for (key, operations) in &partitions {
        let mut search = Search::new(model, history, operations);
        match search.run(&mut steps, options) {
            SearchResult::Linearizable => {}
            SearchResult::Violation => {
                let violation = search.violation(format!("{key:?}"));
                return Ok(CheckResult::Violation(Box::new(violation)));
            }
            SearchResult::OutOf(budget) => {
                if unknown.is_none() {
                    unknown = Some((format!("{key:?}"), budget));
                }
            }
        }
    }
    Ok(match unknown {
        Some((partition, exhausted)) => CheckResult::Unknown(Unknown {
            partition,
            steps,
            exhausted,
        }),
        None => CheckResult::Linearizable,
    })
}

/// A set of operations of one partition, by local index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OperationSet {
    words: Vec<u64>,
}

impl OperationSet {
    fn new(size: usize) -> OperationSet {
        OperationSet {
            words: vec![0; size.div_ceil(64)],
        }
    }

    fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: usize) {
        self.words[index / 64] &= !(1 << (index % 64));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    // Calls sort before returns at equal times: equal times are concurrent.
    Call,
    Return,
}

const NONE: usize = usize::MAX;

enum SearchResult {
    Linearizable,
    Violation,
    OutOf(Budget),
}

/// The state of the search over one partition.
struct Search<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    /// Local operation index → history index.
    operations: &'a [usize],
    /// Per list node (events in time order, then the head sentinel): the local operation and
    /// whether the node is its call or its return.
    node_operation: Vec<usize>,
    node_kind: Vec<EventKind>,
    /// The doubly linked list of events not yet lifted; `head` is a sentinel.
    next: Vec<usize>,
    previous: Vec<usize>,
    head: usize,
    /// Per local operation, its call and return nodes.
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    /// The longest prefix reached when the search hit a return it could not pass: local
    /// operations in order, the blocked operation, and the state after the prefix.
    deepest: Option<(Vec<usize>, usize, M::State)>,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(
        model: &'a M,
        history: &'a [Operation<M::Input, M::Output>],
        operations: &'a [usize],
    ) -> Search<'a, M> {
        // (time, kind, pending, local index): pending returns come last, after every
        // completed return, at "infinity".
        let mut events: Vec<(u64, EventKind, bool, usize)> =
            Vec::with_capacity(operations.len() * 2);
        for (local, &index) in operations.iter().enumerate() {
            let operation = &history[index];
            events.push((operation.invoke_time, EventKind::Call, false, local));
            match operation.return_time() {
                Some(time) => events.push((time, EventKind::Return, false, local)),
                None => events.push((u64::MAX, EventKind::Return, true, local)),
            }
        }
        events.sort_unstable();

        let nodes = events.len();
        let head = nodes;
        let mut call_node = vec![NONE; operations.len()];
        let mut return_node = vec![NONE; operations.len()];
        let mut node_operation = Vec::with_capacity(nodes);
        let mut node_kind = Vec::with_capacity(nodes);
        for (node, &(_, kind, _, local)) in events.iter().enumerate() {
            match kind {
                EventKind::Call => call_node[local] = node,
                EventKind::Return => return_node[local] = node,
            }
            node_operation.push(local);
            node_kind.push(kind);
        }
        // Node i links to i + 1; the head links to node 0.
        let mut next: Vec<usize> = (1..=nodes).collect();
        if let Some(last) = next.last_mut() {
            *last = NONE;
        }
        next.push(if nodes > 0 { 0 } else { NONE });
        let mut previous: Vec<usize> = (0..nodes).map(|node| node.wrapping_sub(1)).collect();
        if let Some(first) = previous.first_mut() {
            *first = head;
        }
        previous.push(NONE);

        for local in 0..operations.len() {
            assert!(
                call_node[local] < return_node[local],
                "a call precedes its return"
            );
        }
        Search {
            model,
            history,
            operations,
            node_operation,
            node_kind,
            next,
            previous,
            head,
            call_node,
            return_node,
            deepest: None,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        if next != NONE {
            self.previous[next] = previous;
        }
    }

    /// Undoes `unlink(node)`; valid only in reverse order of the unlinks.
    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        if next != NONE {
            self.previous[next] = node;
        }
    }

    fn lift(&mut self, local: usize) {
        self.unlink(self.call_node[local]);
        self.unlink(self.return_node[local]);
    }

    fn unlift(&mut self, local: usize) {
        self.relink(self.return_node[local]);
        self.relink(self.call_node[local]);
    }

    fn operation(&self, local: usize) -> &'a Operation<M::Input, M::Output> {
        &self.history[self.operations[local]]
    }

    fn run(&mut self, steps: &mut u64, options: &CheckOptions) -> SearchResult {
        let model = self.model;
        let mut state = model.initial_state();
        let mut linearized = OperationSet::new(self.operations.len());
        let mut cache: HashSet<(OperationSet, M::State)> = HashSet::new();
        // What one entry holds besides its state's heap data: its slot (and control byte) in
        // the table, and the words of its set.
        let entry_bytes = (std::mem::size_of::<(OperationSet, M::State)>()
            + 1
            + linearized.words.len() * std::mem::size_of::<u64>()) as u64;
        let mut memo_bytes: u64 = 0;
        // (local operation, state before it), in linearization order.
        let mut stack: Vec<(usize, M::State)> = Vec::with_capacity(self.operations.len());
        let mut completed_remaining = (0..self.operations.len())
            .filter(|&local| self.operation(local).return_time().is_some())
            .count();

        let mut node = self.next[self.head];
        loop {
            // Pending operations left over can all be dropped: they never took effect.
            if completed_remaining == 0 {
                return SearchResult::Linearizable;
            }
            if *steps >= options.steps_max {
                return SearchResult::OutOf(Budget::Steps);
            }
            if memo_bytes > options.memo_bytes_max {
                return SearchResult::OutOf(Budget::MemoBytes);
            }
            *steps += 1;
            // A completed operation is unlinearized, so its return is still in the list,
            // ahead of every pending return.
            assert!(node != NONE, "the scan always meets a return first");
            let local = self.node_operation[node];
            let operation = self.operation(local);
            match self.node_kind[node] {
                EventKind::Call => {
                    if let Some(next_state) =
                        model.step(&state, &operation.input, operation.output())
                    {
                        linearized.insert(local);
                        let entry = entry_bytes + model.state_heap_bytes(&next_state) as u64;
                        if cache.insert((linearized.clone(), next_state.clone())) {
                            memo_bytes += entry;
                            stack.push((local, std::mem::replace(&mut state, next_state)));
                            self.lift(local);
                            if operation.return_time().is_some() {
                                completed_remaining -= 1;
                            }
                            node = self.next[self.head];
                            continue;
                        }
                        linearized.remove(local);
                    }
                    node = self.next[node];
                }
                EventKind::Return => {
                    // `local` must take effect before anything after its return; every
                    // candidate before it has failed, so undo the last choice.
                    let deeper = match &self.deepest {
                        Some((prefix, _, _)) => stack.len() > prefix.len(),
                        None => true,
                    };
                    if deeper {
                        let prefix = stack.iter().map(|(local, _)| *local).collect();
                        self.deepest = Some((prefix, local, state.clone()));
                    }
                    let Some((undone, previous_state)) = stack.pop() else {
                        return SearchResult::Violation;
                    };
                    state = previous_state;
                    linearized.remove(undone);
                    self.unlift(undone);
                    if self.operation(undone).return_time().is_some() {
                        completed_remaining += 1;
                    }
                    node = self.next[self.call_node[undone]];
                }
            }
        }
    }

    /// Builds the report of a failed search.
    fn violation(&self, partition: String) -> Violation {
        let (prefix, blocked, state) = self
            .deepest
            .clone()
            .expect("a failed search has met a return it could not pass");
        let blocked_operation = self.operation(blocked);
        let blocked_return_time = blocked_operation.return_time().unwrap_or(u64::MAX);
        let prefix_set: HashSet<usize> = prefix.iter().copied().collect();

        const CONTEXT_OPERATIONS: usize = 3;
        const CANDIDATES_SHOWN_MAX: usize = 16;
        let context_start = prefix.len().saturating_sub(CONTEXT_OPERATIONS);
        let context = &prefix[context_start..];
        let mut candidates: Vec<usize> = (0..self.operations.len())
            .filter(|local| !prefix_set.contains(local))
            .filter(|&local| self.operation(local).invoke_time <= blocked_return_time)
            .collect();
        candidates.sort_by_key(|&local| (self.operation(local).invoke_time, local));
        let candidates_hidden = candidates.len().saturating_sub(CANDIDATES_SHOWN_MAX);
        candidates.truncate(CANDIDATES_SHOWN_MAX);

        let mut report = String::new();
        let _ = writeln!(
            report,
            "not linearizable: partition {partition} ({} operations)",
            self.operations.len()
        );
        let _ = writeln!(
            report,
            "  longest linearizable prefix: {} operations, leaving state {state:?}",
            prefix.len()
        );
        if context_start > 0 {
            let _ = writeln!(report, "    ... {context_start} earlier operation(s)");
        }
        for (position, &local) in context.iter().enumerate() {
            let order = context_start + position + 1;
            self.write_operation(&mut report, local, &format!("linearized #{order}"));
        }
        let _ = writeln!(
            report,
            "  stuck there: #{} must take effect before it returns, but none of the \
             operations that could come next fits:",
            self.operations[blocked]
        );
        for &local in &candidates {
            let note = if local == blocked { "<- blocked" } else { "" };
            self.write_operation(&mut report, local, note);
        }
        if candidates_hidden > 0 {
            let _ = writeln!(report, "    ... and {candidates_hidden} more");
        }

        let to_history = |locals: &[usize]| -> Vec<usize> {
            locals.iter().map(|&local| self.operations[local]).collect()
        };
        let mut window = to_history(context);
        window.extend(to_history(&candidates));
        Violation {
            partition,
            partition_operations: self.operations.len(),
            linearized_prefix: to_history(&prefix),
            blocked_operation: self.operations[blocked],
            window,
            report,
        }
    }

    fn write_operation(&self, report: &mut String, local: usize, note: &str) {
        let operation = self.operation(local);
        let interval = match operation.return_time() {
            Some(time) => format!("[{}, {}]", operation.invoke_time, time),
            None => format!("[{}, pending)", operation.invoke_time),
        };
        let output = match operation.output() {
            Some(output) => format!("{output:?}"),
            None => "?".to_string(),
        };
        let call = format!("{:?} -> {output}", operation.input);
        let line = format!(
            "    #{:<5} client {:<4} {:<22} {call:<40} {note}",
            self.operations[local], operation.client, interval
        );
        let _ = writeln!(report, "{}", line.trim_end());
    }
}

/// The model of [`crate::kv`]: one register per key, partitioned by key.
///
/// Outputs are the [`KvOutput`]s of applied operations. Leave out of the history any operation
/// the store refused (an error response: it did not take effect); record an operation whose
/// response was lost (or was [`KvError::ResponseDropped`](crate::kv::KvError::ResponseDropped))
/// as [`Completion::Pending`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

/// The value of one key in [`KvModel`]; `None` when absent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KvRegister(pub Option<Bytes>);

impl fmt::Debug for KvRegister {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => write_quoted(formatter, value),
            None => write!(formatter, "absent"),
        }
    }
}

impl Model for KvModel {
    type State = KvRegister;
    type Input = KvOperation;
    type Output = KvOutput;
    type PartitionKey = Bytes;

    fn initial_state(&self) -> KvRegister {
        KvRegister(None)
    }

    fn partition_key(&self, input: &KvOperation) -> Bytes {
        input.key().clone()
    }

    fn step(
        &self,
        state: &KvRegister,
        input: &KvOperation,
        output: Option<&KvOutput>,
    ) -> Option<KvRegister> {
        let current = &state.0;
        let (next, expected_output) = match input {
            KvOperation::Get { .. } => (current.clone(), KvOutput::Value(current.clone())),
            KvOperation::Put { value, .. } => (Some(value.clone()), KvOutput::Written),
            KvOperation::Delete { .. } => (None, KvOutput::Deleted(current.is_some())),
            KvOperation::Append { value, .. } => {
                let mut appended = current.as_deref().unwrap_or_default().to_vec();
                appended.extend_from_slice(value);
                let length_bytes = appended.len() as u64;
                (
                    Some(Bytes::from(appended)),
                    KvOutput::Appended { length_bytes },
                )
            }
            KvOperation::CompareAndSwap { expected, new, .. } => {
                if current == expected {
                    (new.clone(), KvOutput::Swapped(true))
                } else {
                    (current.clone(), KvOutput::Swapped(false))
                }
            }
        };
        match output {
            Some(observed) if *observed != expected_output => None,
            _ => Some(KvRegister(next)),
        }
    }

    fn state_heap_bytes(&self, state: &KvRegister) -> usize {
        state.0.as_ref().map_or(0, Bytes::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type KvHistory = Vec<Operation<KvOperation, KvOutput>>;

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

    fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> KvOperation {
        KvOperation::CompareAndSwap {
            key: bytes(key),
            expected: expected.map(bytes),
            new: new.map(bytes),
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

    fn verdict(history: &KvHistory) -> CheckResult {
        check(&KvModel, history, &CheckOptions::default()).unwrap()
    }

    fn assert_linearizable(history: &KvHistory) {
        let result = verdict(history);
        assert!(result.is_linearizable(), "{result}");
    }

    fn assert_violation(history: &KvHistory) -> Violation {
        match verdict(history) {
            CheckResult::Violation(violation) => *violation,
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert_linearizable(&Vec::new());
        assert_linearizable(&vec![
            returned(1, (0, 1), get("x"), value(None)),
            returned(1, (2, 3), put("x", "a"), KvOutput::Written),
            returned(2, (4, 5), get("x"), value(Some("a"))),
            returned(
                2,
                (6, 7),
                append("x", "b"),
                KvOutput::Appended { length_bytes: 2 },
            ),
            returned(
                1,
                (8, 9),
                cas("x", Some("ab"), None),
                KvOutput::Swapped(true),
            ),
            returned(
                1,
                (10, 11),
                KvOperation::Delete { key: bytes("x") },
                KvOutput::Deleted(false),
            ),
        ]);
    }

    #[test]
    fn stale_read_is_a_violation() {
        let violation = assert_violation(&vec![
            returned(1, (0, 10), put("x", "a"), KvOutput::Written),
            returned(1, (20, 30), put("x", "b"), KvOutput::Written),
            returned(2, (40, 50), get("x"), value(Some("a"))),
        ]);
        assert_eq!(violation.blocked_operation, 2);
        assert_eq!(violation.linearized_prefix, vec![0, 1]);
        let report = violation.to_string();
        assert!(report.contains("partition b\"x\""), "{report}");
        assert!(report.contains("get(\"x\") -> \"a\""), "{report}");
        assert!(report.contains("<- blocked"), "{report}");
    }

    #[test]
    fn lost_write_is_a_violation() {
        assert_violation(&vec![
            returned(
                1,
                (0, 10),
                append("x", "a"),
                KvOutput::Appended { length_bytes: 1 },
            ),
            returned(
                2,
                (20, 30),
                append("x", "b"),
                KvOutput::Appended { length_bytes: 2 },
            ),
            returned(3, (40, 50), get("x"), value(Some("b"))),
        ]);
        // Two writers both succeed, then the reads flip back and forth.
        assert_violation(&vec![
            returned(1, (0, 10), put("x", "a"), KvOutput::Written),
            returned(2, (0, 10), put("x", "b"), KvOutput::Written),
            returned(3, (20, 30), get("x"), value(Some("a"))),
            returned(3, (40, 50), get("x"), value(Some("b"))),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let violation = assert_violation(&vec![
            returned(1, (0, 10), put("x", "a"), KvOutput::Written),
            returned(2, (5, 15), get("x"), value(Some("z"))),
        ]);
        assert_eq!(violation.blocked_operation, 1);
        assert!(violation.linearized_prefix.len() <= 1);
    }

    #[test]
    fn cas_anomalies_are_violations() {
        // Two concurrent CAS from absent both succeed.
        assert_violation(&vec![
            returned(
                1,
                (0, 10),
                cas("x", None, Some("a")),
                KvOutput::Swapped(true),
            ),
            returned(
                2,
                (0, 10),
                cas("x", None, Some("b")),
                KvOutput::Swapped(true),
            ),
        ]);
        // A CAS fails although its expected value was certainly there.
        assert_violation(&vec![
            returned(1, (0, 10), put("x", "a"), KvOutput::Written),
            returned(
                2,
                (20, 30),
                cas("x", Some("a"), Some("b")),
                KvOutput::Swapped(false),
            ),
        ]);
        // Concurrent CAS: exactly one wins, and the read agrees with the winner.
        assert_linearizable(&vec![
            returned(
                1,
                (0, 10),
                cas("x", None, Some("a")),
                KvOutput::Swapped(false),
            ),
            returned(
                2,
                (0, 10),
                cas("x", None, Some("b")),
                KvOutput::Swapped(true),
            ),
            returned(3, (20, 30), get("x"), value(Some("b"))),
        ]);
    }

    #[test]
    fn overlapping_writes_linearize_in_the_only_order_that_fits() {
        // put(a) and put(b) overlap; the reads force b before a.
        let mut history = vec![
            returned(1, (0, 50), put("x", "a"), KvOutput::Written),
            returned(2, (10, 60), put("x", "b"), KvOutput::Written),
            returned(3, (20, 30), get("x"), value(Some("b"))),
            returned(3, (70, 80), get("x"), value(Some("a"))),
        ];
        assert_linearizable(&history);
        // A later read of b contradicts that only order.
        history.push(returned(4, (90, 100), get("x"), value(Some("b"))));
        let violation = assert_violation(&history);
        assert_eq!(violation.blocked_operation, 4);
    }

    #[test]
    fn equal_times_are_concurrent() {
        assert_linearizable(&vec![
            returned(1, (0, 10), get("x"), value(Some("a"))),
            returned(2, (10, 20), put("x", "a"), KvOutput::Written),
        ]);
    }

    #[test]
    fn pending_operations_may_or_may_not_take_effect() {
        let pending_put = || Operation::pending(1, 0, put("x", "a"));
        // Never took effect.
        assert_linearizable(&vec![
            pending_put(),
            returned(2, (10, 20), get("x"), value(None)),
        ]);
        // Took effect late.
        assert_linearizable(&vec![
            pending_put(),
            returned(2, (10, 20), get("x"), value(None)),
            returned(2, (30, 40), get("x"), value(Some("a"))),
        ]);
        // Took effect, then it cannot be undone.
        assert_violation(&vec![
            pending_put(),
            returned(2, (10, 20), get("x"), value(Some("a"))),
            returned(2, (30, 40), get("x"), value(None)),
        ]);
        // Not before its invocation.
        assert_violation(&vec![
            returned(2, (10, 20), get("x"), value(Some("a"))),
            Operation::pending(1, 30, put("x", "a")),
        ]);
    }

    #[test]
    fn violation_names_the_offending_key() {
        let violation = assert_violation(&vec![
            returned(1, (0, 10), put("a", "1"), KvOutput::Written),
            returned(1, (20, 30), get("a"), value(Some("1"))),
            returned(2, (0, 10), put("b", "1"), KvOutput::Written),
            returned(2, (20, 30), get("b"), value(None)),
        ]);
        assert_eq!(violation.partition, "b\"b\"");
        assert_eq!(violation.partition_operations, 2);
        assert_eq!(violation.blocked_operation, 3);
        assert!(violation.window.contains(&3));
    }

    #[test]
    fn malformed_history_is_an_error() {
        let history = vec![returned(1, (10, 5), get("x"), value(None))];
        assert_eq!(
            check(&KvModel, &history, &CheckOptions::default()),
            Err(HistoryError::ReturnBeforeInvoke {
                operation: 0,
                invoke_time: 10,
                return_time: 5
            })
        );
    }

    #[test]
    fn exhausted_budget_is_unknown_not_a_verdict() {
        // Fully concurrent appends, whose order only the read pins down: the reverse of the
        // order the search tries first, so it explores (nearly) every other order before.
        let mut history = Vec::new();
        let mut expected = String::new();
        for client in 0..7u64 {
            let letter = char::from(b'a' + client as u8).to_string();
            expected.insert_str(0, &letter);
            history.push(Operation::pending(client, 0, append("x", &letter)));
        }
        history.push(returned(99, (0, 1000), get("x"), value(Some(&expected))));
        let options = CheckOptions {
            steps_max: 50,
            ..CheckOptions::default()
        };
        match check(&KvModel, &history, &options).unwrap() {
            CheckResult::Unknown(unknown) => {
                assert_eq!(unknown.steps, 50);
                assert_eq!(unknown.exhausted, Budget::Steps);
                assert_eq!(unknown.partition, "b\"x\"");
            }
            other => panic!("expected unknown, got {other}"),
        }
        assert_linearizable(&history);
    }

    /// A model outside the key-value store: a counter with increments and reads, unpartitioned.
    struct CounterModel;

    #[derive(Debug)]
    enum CounterInput {
        Increment,
        Read,
    }

    impl Model for CounterModel {
        type State = u64;
        type Input = CounterInput;
        type Output = u64;
        type PartitionKey = ();

        fn initial_state(&self) -> u64 {
            0
        }

        fn partition_key(&self, _input: &CounterInput) {}

        fn step(&self, state: &u64, input: &CounterInput, output: Option<&u64>) -> Option<u64> {
            match input {
                CounterInput::Increment => Some(state + 1),
                CounterInput::Read => match output {
                    Some(observed) if observed != state => None,
                    _ => Some(*state),
                },
            }
        }
    }

    #[test]
    fn custom_models_plug_in() {
        let history = vec![
            Operation::returned(1, 0, 10, CounterInput::Increment, 0),
            Operation::returned(2, 0, 10, CounterInput::Increment, 0),
            Operation::returned(3, 5, 6, CounterInput::Read, 1),
            Operation::returned(3, 20, 30, CounterInput::Read, 2),
        ];
        let options = CheckOptions::default();
        assert!(check(&CounterModel, &history, &options)
            .unwrap()
            .is_linearizable());
        let mut broken = history;
        broken.push(Operation::returned(4, 40, 50, CounterInput::Read, 1));
        let result = check(&CounterModel, &broken, &options).unwrap();
        assert!(matches!(result, CheckResult::Violation(_)), "{result}");
    }

    /// The sequential specification used to generate histories, written independently of
    /// [`KvModel`].
    fn run_sequentially(store: &mut BTreeMap<Bytes, Bytes>, operation: &KvOperation) -> KvOutput {
        match operation {
            KvOperation::Get { key } => KvOutput::Value(store.get(key).cloned()),
            KvOperation::Put { key, value } => {
                store.insert(key.clone(), value.clone());
                KvOutput::Written
            }
            KvOperation::Delete { key } => KvOutput::Deleted(store.remove(key).is_some()),
            KvOperation::Append { key, value } => {
                let mut current = store
                    .get(key)
                    .map(|value| value.to_vec())
                    .unwrap_or_default();
                current.extend_from_slice(value);
                let length_bytes = current.len() as u64;
                store.insert(key.clone(), Bytes::from(current));
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

    fn arbitrary_operation() -> impl Strategy<Value = KvOperation> {
        let key = (0u8..3).prop_map(|key| Bytes::from(vec![b'k', b'0' + key]));
        let value = (0u8..4).prop_map(|value| Bytes::from(vec![b'v', b'0' + value]));
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

    /// How one generated operation ends up in the history.
    #[derive(Clone, Copy, Debug)]
    enum Fate {
        /// Took effect and returned.
        Returned,
        /// Took effect; the response was lost.
        EffectLost,
        /// Never took effect; the response was lost.
        Vanished,
    }

    fn arbitrary_fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            8 => Just(Fate::Returned),
            1 => Just(Fate::EffectLost),
            1 => Just(Fate::Vanished),
        ]
    }

    /// Runs the operations one at a time (the real serial order), then gives each an interval
    /// around its instant: the resulting history is linearizable by construction.
    fn serial_history(steps: &[(KvOperation, Fate, u64, u64, u64)]) -> KvHistory {
        let mut store = BTreeMap::new();
        let mut history = Vec::new();
        for (position, (operation, fate, before, after, client)) in steps.iter().enumerate() {
            let instant = 1000 + 10 * position as u64;
            let invoke_time = instant - before;
            let output = match fate {
                Fate::Vanished => None,
                Fate::Returned | Fate::EffectLost => Some(run_sequentially(&mut store, operation)),
            };
            history.push(match (fate, output) {
                (Fate::Returned, Some(output)) => Operation::returned(
                    *client,
                    invoke_time,
                    instant + after,
                    operation.clone(),
                    output,
                ),
                _ => Operation::pending(*client, invoke_time, operation.clone()),
            });
        }
        history
    }

    fn arbitrary_steps() -> impl Strategy<Value = Vec<(KvOperation, Fate, u64, u64, u64)>> {
        proptest::collection::vec(
            (
                arbitrary_operation(),
                arbitrary_fate(),
                0u64..40,
                0u64..40,
                0u64..5,
            ),
            1..40,
        )
    }

    proptest! {
        /// Histories of a real serial run, with overlapping intervals around each operation's
        /// instant and some responses lost, are always linearizable.
        #[test]
        fn serial_runs_are_accepted(steps in arbitrary_steps()) {
            let history = serial_history(&steps);
            let result = check(&KvModel, &history, &CheckOptions::default()).unwrap();
            prop_assert!(result.is_linearizable(), "{}", result);
        }

        /// Corrupting one read to a value never written is always caught.
        #[test]
        fn a_read_of_a_never_written_value_is_rejected(
            steps in arbitrary_steps(),
            choice in any::<proptest::sample::Index>(),
        ) {
            let mut history = serial_history(&steps);
            let reads: Vec<usize> = history
                .iter()
                .enumerate()
                .filter(|(_, operation)| {
                    operation.input.is_read_only() && operation.return_time().is_some()
                })
                .map(|(index, _)| index)
                .collect();
            let corrupted = if reads.is_empty() {
                history.push(returned(9, (5000, 5001), get("k0"), value(None)));
                history.len() - 1
            } else {
                reads[choice.index(reads.len())]
            };
            if let Completion::Returned { output, .. } = &mut history[corrupted].completion {
                *output = value(Some("never written"));
            }
            match check(&KvModel, &history, &CheckOptions::default()).unwrap() {
                CheckResult::Violation(violation) => {
                    prop_assert!(violation.window.contains(&corrupted), "{}", violation);
                }
                other => prop_assert!(false, "corruption not caught: {}", other),
            }
        }
    }
}
