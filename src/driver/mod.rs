//! Runs a [`Replica`] over a [`Storage`] and a [`Transport`] with `futures`, on any runtime.
//!
//! The [`Driver`] owns the replica and runs the Ready loop:
//! - ticks come from a stream you provide (a runtime timer: `tokio::time::interval`,
//!   `async_io::Timer::interval`, ...), so the driver itself needs no particular runtime.
//!   A tick that is ready is taken before any message or request that is ready: with
//!   leader leases ([`Config::lease_ticks`](crate::Config::lease_ticks)), give it a stream
//!   that yields the ticks it missed at once after a stall (`tokio::time::interval` with
//!   `MissedTickBehavior::Burst`), so the replica's clock is caught up before it steps
//!   anything;
//! - inbound messages come from a stream (your transport's receiving side);
//! - proposals come from [`Handle`]s, and so do linearizable reads
//!   ([`Handle::read_index`]);
//! - committed entries go out, in slot order, on a bounded channel ([`Committed`]); a slow
//!   consumer slows the driver down rather than growing a queue. A snapshot installed from a
//!   peer goes out on the same channel, in its place in the order ([`Applied::Snapshot`]);
//! - the application compacts with [`Handle::compact`] once its snapshot is taken; a peer
//!   that needs compacted slots is sent the snapshot the storage holds;
//! - writes go to a dedicated storage thread, off the event loop. The thread merges every
//!   write queued behind the one in progress into a single atomic write with a single sync:
//!   **group commit** — under load, one fsync covers many proposals. Messages that reveal a
//!   write (promises, acceptances) are sent only when that write is durable.
//!
//! A storage failure stops the driver with [`DriverError::Storage`]: nothing that failed to
//! persist is ever acknowledged.

use crate::error::{
    AcknowledgeError, MembershipError, ProposeError, ReadError, StorageError, TransferError,
};
use crate::message::Message;
use crate::replica::{Event, Replica, Status};
use crate::storage::Snapshot;
use crate::storage::{Storage, WriteBatch};
use crate::transport::Transport;
use crate::types::{Entry, ProposalId, Slot, Value};
use crate::types::{Membership, NodeId};
use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::stream::BoxStream;
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::BTreeMap;
use thiserror::Error;

/// Limits of the driver's own queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// Committed entries buffered for the application before the driver waits for it.
    pub committed_capacity: usize,
    /// Requests (proposals, status) buffered from handles.
    pub request_capacity: usize,
    /// Proposals waiting for their commit through [`Handle::propose_and_wait`].
    pub waiters_max: usize,
    /// Writes merged into one storage write (one sync) at most.
    pub group_commit_writes_max: usize,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            committed_capacity: 4096,
            request_capacity: 4096,
            waiters_max: 65_536,
            group_commit_writes_max: 1024,
        }
    }
}

/// Why the driver stopped.
#[derive(Debug, Error)]
pub enum DriverError {
    /// A storage write failed. The node must stop: restart it from its storage (after fixing
    /// the disk) so it never acknowledges what it did not persist.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    /// The storage thread could not be started or died.
    #[error("storage thread failed: {0}")]
    StorageThread(String),
    /// The replica refused the acknowledgement of a write the storage thread completed: a
    /// bug in the driver, never expected. The driver stops rather than guess which votes are
    /// durable; restart the node from its storage.
    #[error("write acknowledgement refused: {0}")]
    Acknowledge(#[from] AcknowledgeError),
}

/// [`Handle::compact`] was refused; nothing was saved or compacted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompactError {
    /// The snapshot covers slots the driver has not yet handed out on [`Committed`]: take
    /// snapshots only of what the state machine applied.
    #[error("the snapshot covers slots through {slot}, beyond the applied mark {applied}")]
    NotApplied {
        /// The snapshot's slot.
        slot: Slot,
        /// The last slot handed out.
        applied: Slot,
    },
    /// The snapshot is larger than `Config::snapshot_bytes_max`: a peer that falls behind the
    /// compacted log could not be sent it, and would never catch up. Nothing is compacted;
    /// raise the limit (and the transport's frame limit with it) or keep the log.
    #[error(
        "the snapshot has {size} bytes, more than snapshot_bytes_max ({max}) lets a peer receive"
    )]
    TooLarge {
        /// The snapshot's data size.
        size: usize,
        /// `Config::snapshot_bytes_max`.
        max: usize,
    },
    /// The driver has stopped (or its storage failed while saving the snapshot).
    #[error("the driver has stopped")]
    Stopped,
}

impl From<crate::error::CompactError> for CompactError {
    /// The replica's refusal ([`Replica::compact`]) as the driver's.
    fn from(error: crate::error::CompactError) -> CompactError {
        match error {
            crate::error::CompactError::NotApplied { through, applied } => {
                CompactError::NotApplied {
                    slot: through,
                    applied,
                }
            }
        }
    }
}

/// A proposal made through a [`Handle`] failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProposalError {
    /// The replica refused it (not leader and not forwarding, or busy): see [`ProposeError`].
    #[error(transparent)]
    Rejected(#[from] ProposeError),
    /// The driver has stopped. The command is handed back.
    #[error("the driver has stopped")]
    Stopped {
        /// The command, handed back.
        command: Bytes,
    },
    /// The driver stopped (or its waiter table was full) before the command committed; it may
    /// still commit later. Retry with a session to make the retry exactly-once.
    #[error("the outcome of the proposal is unknown")]
    Unknown,
}

/// A read through [`Handle::read_index`] failed; ask again, elsewhere or through the log.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadIndexError {
    /// The replica refused it (not the leader, or too many reads waiting): see
    /// [`ReadError`].
    #[error(transparent)]
    Rejected(#[from] ReadError),
    /// The leadership ended before the read was confirmed. Ask the new leader.
    #[error("the leadership ended before the read was confirmed")]
    Aborted,
    /// The driver has stopped.
    #[error("the driver has stopped")]
    Stopped,
}

/// What the driver answers a proposal with: the id, and a receiver of the commit slot if the
/// caller waits for it.
type ProposeReply = Result<(ProposalId, Option<oneshot::Receiver<Slot>>), ProposalError>;

enum Request {
    Propose {
        command: Bytes,
        wait: bool,
        reply: oneshot::Sender<ProposeReply>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<Slot, ReadIndexError>>,
    },
    Transfer {
        to: NodeId,
        reply: oneshot::Sender<Result<(), TransferError>>,
    },
    Stats {
        reply: oneshot::Sender<DriverStats>,
    },
    Compact {
        snapshot: Snapshot,
        reply: oneshot::Sender<Result<(), CompactError>>,
    },
    ChangeMembership {
        membership: Membership,
        reply: oneshot::Sender<Result<Slot, MembershipError>>,
    },
}

/// Submits proposals to a running [`Driver`] and queries it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Propose { command, .. } => {
                write!(formatter, "Propose({} bytes)", command.len())
            }
            Request::Status { .. } => write!(formatter, "Status"),
            Request::ReadIndex { .. } => write!(formatter, "ReadIndex"),
            Request::Transfer { to, .. } => write!(formatter, "Transfer({to})"),
            Request::Stats { .. } => write!(formatter, "Stats"),
            Request::Compact { snapshot, .. } => write!(formatter, "Compact({})", snapshot.slot),
            Request::ChangeMembership { membership, .. } => {
                write!(formatter, "ChangeMembership({membership})")
            }
        }
    }
}

impl Handle {
    /// Proposes `command`; returns its id once the replica took it (not once committed: watch
    /// [`Committed`] for the id, or use [`propose_and_wait`](Handle::propose_and_wait)).
    ///
    /// # Errors
    /// [`ProposalError::Rejected`] with the replica's reason (the command is inside);
    /// [`ProposalError::Stopped`] if the driver is gone.
    pub async fn propose(&mut self, command: Bytes) -> Result<ProposalId, ProposalError> {
        self.submit(command, false).await.map(|(id, _)| id)
    }

    /// Proposes `command` and waits until this node applies it; returns its id and slot.
    ///
    /// A proposal forwarded to a leader that then fails may never commit: wrap this in your
    /// runtime's timeout and retry (idempotently, see [`crate::session`]).
    ///
    /// Do not await it in the task that reads [`Committed`]: the driver hands entries out
    /// with a bounded channel, and waits for room before it reads the next request, so the
    /// two would wait for each other.
    ///
    /// # Errors
    /// As [`propose`](Handle::propose), plus [`ProposalError::Unknown`] if the driver stopped
    /// before the command committed.
    pub async fn propose_and_wait(
        &mut self,
        command: Bytes,
    ) -> Result<(ProposalId, Slot), ProposalError> {
        let (id, receiver) = self.submit(command, true).await?;
        let receiver = receiver.ok_or(ProposalError::Unknown)?;
        let slot = receiver.await.map_err(|_| ProposalError::Unknown)?;
        Ok((id, slot))
    }

    async fn submit(&mut self, command: Bytes, wait: bool) -> ProposeReply {
        let (reply, response) = oneshot::channel();
        let ready = futures::future::poll_fn(|context| self.requests.poll_ready(context)).await;
        if ready.is_err() {
            return Err(ProposalError::Stopped { command });
        }
        let request = Request::Propose {
            command,
            wait,
            reply,
        };
        if let Err(error) = self.requests.try_send(request) {
            let command = match error.into_inner() {
                Request::Propose { command, .. } => command,
                Request::Status { .. }
                | Request::Stats { .. }
                | Request::Compact { .. }
                | Request::ReadIndex { .. }
                | Request::ChangeMembership { .. }
                | Request::Transfer { .. } => Bytes::new(),
            };
            return Err(ProposalError::Stopped { command });
        }
        response.await.map_err(|_| ProposalError::Unknown)?
    }

    /// A linearizable read without a log entry (see
    /// [`Replica::read_index`](crate::Replica::read_index)): returns a slot once the leader
    /// (this node, or the leader a follower asks) has confirmed, with a quorum, that it
    /// still leads. Serve the read from your state
    /// machine once it has applied that slot (every entry through it came out of
    /// [`Committed`], or a snapshot covering it did): the state then includes every write
    /// acknowledged before this call.
    ///
    /// # Errors
    /// [`ReadIndexError::Rejected`] if this node neither leads nor knows a leader to ask
    /// (or forwards no reads: the hint names the leader, if known) or too many reads wait;
    /// [`ReadIndexError::Aborted`] if the leadership ended first, or the leader a follower
    /// asked refused or did not answer within an election timeout; [`ReadIndexError::Stopped`] if the driver is gone. Any of them: read through
    /// the log, or ask the leader.
    pub async fn read_index(&mut self) -> Result<Slot, ReadIndexError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::ReadIndex { reply })
            .await
            .map_err(|_| ReadIndexError::Stopped)?;
        response.await.map_err(|_| ReadIndexError::Stopped)?
    }

    /// Starts handing the leadership over to member `to`
    /// ([`Replica::transfer_leadership`](crate::Replica::transfer_leadership)); returns once
    /// the transfer has started, not once it completed (watch [`status`](Handle::status)).
    /// `None` if the driver has stopped.
    ///
    /// # Errors
    /// The replica's [`TransferError`]: this node does not lead, or `to` is not a member.
    pub async fn transfer_leadership(&mut self, to: NodeId) -> Option<Result<(), TransferError>> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Transfer { to, reply })
            .await
            .ok()?;
        response.await.ok()
    }

    /// Proposes a membership change at this node, which must lead
    /// ([`Replica::change_membership`](crate::Replica::change_membership)); returns the slot
    /// of the configuration entry once proposed, not once chosen: it is chosen when it comes
    /// out of [`Committed`] as an entry holding [`Value::Membership`]. The transport must
    /// reach the nodes it adds. `None` if the driver has stopped.
    ///
    /// # Errors
    /// The replica's [`MembershipError`]: not the leader, an invalid membership, a change
    /// already under way, or the leader is busy.
    pub async fn change_membership(
        &mut self,
        membership: Membership,
    ) -> Option<Result<Slot, MembershipError>> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::ChangeMembership { membership, reply })
            .await
            .ok()?;
        response.await.ok()
    }

    /// The replica's current [`Status`], or `None` if the driver has stopped.
    pub async fn status(&mut self) -> Option<Status> {
        let (reply, response) = oneshot::channel();
        self.requests.send(Request::Status { reply }).await.ok()?;
        response.await.ok()
    }

    /// Saves `snapshot` (the state machine's, taken after applying every entry up to
    /// `snapshot.slot` from [`Committed`]) to the storage and compacts the log through its
    /// slot, in the replica and in the storage. Returns once the snapshot is durable. Peers
    /// that later need the compacted slots are sent this snapshot.
    ///
    /// Await it in another task than the one that reads [`Committed`] (spawn it): the driver
    /// may be waiting for room in that channel before it reads this request.
    ///
    /// # Errors
    /// [`CompactError::NotApplied`] if the snapshot is beyond what the driver handed out;
    /// [`CompactError::TooLarge`] if it could not be sent to a peer; [`CompactError::Stopped`]
    /// if the driver is gone or its storage failed.
    pub async fn compact(&mut self, snapshot: Snapshot) -> Result<(), CompactError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Compact { snapshot, reply })
            .await
            .map_err(|_| CompactError::Stopped)?;
        response.await.map_err(|_| CompactError::Stopped)?
    }

    /// The driver's counters so far (what [`Driver::run`] returns at the end), or `None` if
    /// the driver has stopped. For monitoring: `writes / storage_writes` is how many ready
    /// batches one storage write (one sync) covered on average — the group-commit factor.
    pub async fn stats(&mut self) -> Option<DriverStats> {
        let (reply, response) = oneshot::channel();
        self.requests.send(Request::Stats { reply }).await.ok()?;
        response.await.ok()
    }
}

/// What the driver hands the application on [`Committed`], in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A chosen entry: apply it (skip no-ops). Entries come in slot order, each exactly once.
    Entry(Entry),
    /// A snapshot a peer sent because this node lagged behind its compacted log: replace the
    /// state machine with it. Every slot up to `slot` is in it; the next entry is `slot + 1`.
    /// The driver has already saved it to the storage (and compacted the log through it), so
    /// a restart restores it (`Storage::load_snapshot`) with `Config::applied` at its slot.
    Snapshot(Snapshot),
}

/// The stream of what to apply: committed entries in slot order, each exactly once (no-ops
/// included: skip them), and snapshots installed from peers.
pub type Committed = mpsc::Receiver<Applied>;

/// Work for the storage thread, done in order.
enum Job {
    /// A ready's write; with a snapshot installed from a peer, the snapshot is saved and the
    /// log compacted through it first (the write records the chosen mark it moved).
    Write(WriteJob),
    /// The application's snapshot: save it, then compact through its slot.
    Compact(Snapshot),
    /// Read the saved snapshot, for a peer that needs it.
    LoadSnapshot(NodeId),
}

/// A write handed to the storage thread.
struct WriteJob {
    number: u64,
    batch: WriteBatch,
    messages: Vec<Message>,
    snapshot: Option<Snapshot>,
}

/// What the storage thread finished.
enum Done {
    /// A write (or several merged ones) is durable.
    Written(Completed),
    /// A `Job::Compact` is done.
    Compacted,
    /// The saved snapshot, read for a peer.
    SnapshotLoaded(NodeId, Option<Snapshot>),
}

/// A write (or several merged ones) made durable.
struct Completed {
    number: u64,
    messages: Vec<Message>,
    merged_writes: usize,
}

/// Counts kept by the driver, for monitoring and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Ready batches handed to the storage thread.
    pub writes: u64,
    /// Storage writes performed (each a merge of one or more ready batches).
    pub storage_writes: u64,
    /// Messages refused by `Replica::step`.
    pub refused_messages: u64,
    /// Reads confirmed through [`Handle::read_index`].
    pub reads_confirmed: u64,
    /// Snapshots installed from a peer (handed out as [`Applied::Snapshot`]).
    pub snapshots_installed: u64,
}

/// Runs a replica: see the [module documentation](self).
pub struct Driver<S, T> {
    replica: Replica,
    storage: Option<S>,
    transport: T,
    ticks: BoxStream<'static, ()>,
    inbound: BoxStream<'static, Message>,
    requests: mpsc::Receiver<Request>,
    committed: mpsc::Sender<Applied>,
    waiters: BTreeMap<ProposalId, oneshot::Sender<Slot>>,
    /// Reads asked through `Handle::read_index`, by the context given to the replica.
    reads: BTreeMap<u64, oneshot::Sender<Result<Slot, ReadIndexError>>>,
    /// The context of the last read asked.
    read_counter: u64,
    /// Replies to `Handle::compact`, answered in order as the storage thread finishes.
    compactions: std::collections::VecDeque<oneshot::Sender<Result<(), CompactError>>>,
    /// Jobs handed to the storage thread and not yet finished (a merged write counts as
    /// the writes it merged).
    in_progress: u64,
    config: DriverConfig,
    stats: DriverStats,
}

impl<S, T> std::fmt::Debug for Driver<S, T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Driver")
            .field("id", &self.replica.id())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<S, T> Driver<S, T>
where
    S: Storage + Send + 'static,
    T: Transport,
{
    /// Builds a driver around `replica` (built from what `storage` recovered). Returns the
    /// driver (run it with [`run`](Driver::run)), a [`Handle`] and the [`Committed`] stream.
    pub fn new(
        replica: Replica,
        storage: S,
        transport: T,
        ticks: BoxStream<'static, ()>,
        inbound: BoxStream<'static, Message>,
        config: DriverConfig,
    ) -> (Driver<S, T>, Handle, Committed) {
        let (request_sender, requests) = mpsc::channel(config.request_capacity);
        let (committed, committed_receiver) = mpsc::channel(config.committed_capacity);
        let driver = Driver {
            replica,
            storage: Some(storage),
            transport,
            ticks,
            inbound,
            requests,
            committed,
            waiters: BTreeMap::new(),
            reads: BTreeMap::new(),
            read_counter: 0,
            compactions: std::collections::VecDeque::new(),
            in_progress: 0,
            config,
            stats: DriverStats::default(),
        };
        (
            driver,
            Handle {
                requests: request_sender,
            },
            committed_receiver,
        )
    }

    /// Runs the event loop until the tick stream ends (a clean stop: pending writes finish
    /// first) or storage fails.
    ///
    /// # Errors
    /// [`DriverError::Storage`] if a write failed; [`DriverError::StorageThread`] if the
    /// storage thread could not run; [`DriverError::Acknowledge`] if the replica refused the
    /// acknowledgement of a completed write (a driver bug).
    pub async fn run(mut self) -> Result<DriverStats, DriverError> {
        let storage = self.storage.take().expect("run is called once");
        let (job_sender, job_receiver) = std::sync::mpsc::channel::<Job>();
        let (done_sender, done) = mpsc::unbounded::<Result<Done, StorageError>>();
        let group_max = self.config.group_commit_writes_max;
        let writer = std::thread::Builder::new()
            .name(format!("synod-storage-{}", self.replica.id()))
            .spawn(move || write_loop(storage, job_receiver, done_sender, group_max))
            .map_err(|error| DriverError::StorageThread(error.to_string()))?;
        let result = self.event_loop(&job_sender, done).await;
        drop(job_sender);
        writer
            .join()
            .map_err(|_| DriverError::StorageThread("panicked".to_string()))?;
        result.map(|()| self.stats)
    }

    async fn event_loop(
        &mut self,
        jobs: &std::sync::mpsc::Sender<Job>,
        mut done: mpsc::UnboundedReceiver<Result<Done, StorageError>>,
    ) -> Result<(), DriverError> {
        let mut inbound_open = true;
        let mut requests_open = true;
        loop {
            if let Err(error) = self.drain(jobs, &mut done).await {
                // The storage thread stops after a failed write: report that failure, not the
                // closed channel it left behind.
                while let Some(outcome) = done.next().await {
                    outcome?;
                }
                return Err(error);
            }
            // Ticks first: after a stall the replica's clock catches up before it steps a
            // message or answers a read (the lease contract).
            futures::select_biased! {
                tick = self.ticks.next().fuse() => match tick {
                    Some(()) => {
                        self.replica.tick();
                        self.waiters.retain(|_, waiter| !waiter.is_canceled());
                    }
                    None => break,
                },
                completed = done.next() => {
                    let completed = completed.ok_or_else(|| DriverError::StorageThread("stopped".into()))??;
                    self.on_completed(completed)?;
                }
                message = next_if(&mut self.inbound, inbound_open).fuse() => match message {
                    Some(message) => {
                        if self.replica.step(message).is_err() {
                            self.stats.refused_messages += 1;
                        }
                    }
                    None => inbound_open = false,
                },
                request = next_if(&mut self.requests, requests_open).fuse() => match request {
                    Some(request) => self.handle(request, jobs)?,
                    None => requests_open = false,
                },
            }
        }
        // Clean stop: let the writes already queued finish so their messages are not lost.
        while self.in_progress > 0 {
            match done.next().await {
                Some(Ok(completed)) => self.on_completed(completed)?,
                Some(Err(error)) => return Err(error.into()),
                None => break,
            }
        }
        Ok(())
    }

    /// The storage thread finished a job. A write is durable: release the messages that
    /// revealed it, then count own votes.
    ///
    /// # Errors
    /// [`DriverError::Acknowledge`] if the replica refuses the write's acknowledgement.
    fn on_completed(&mut self, done: Done) -> Result<(), DriverError> {
        match done {
            Done::Written(completed) => {
                self.in_progress -= completed.merged_writes as u64;
                self.stats.storage_writes += 1;
                self.transport.send_all(completed.messages);
                self.replica.on_persisted(completed.number)?;
            }
            Done::Compacted => {
                self.in_progress -= 1;
                if let Some(reply) = self.compactions.pop_front() {
                    let _ = reply.send(Ok(()));
                }
            }
            Done::SnapshotLoaded(follower, snapshot) => {
                self.in_progress -= 1;
                if let Some(snapshot) = snapshot {
                    // Refused only if the storage's snapshot is not one this replica can vouch
                    // for (or too large): the follower asks again, and is reported again.
                    if let Err(error) = self.replica.send_snapshot(follower, &snapshot) {
                        tracing::warn!(node = %self.replica.id(), %follower, %error, "snapshot not sent");
                    }
                }
            }
        }
        Ok(())
    }

    fn handle(
        &mut self,
        request: Request,
        jobs: &std::sync::mpsc::Sender<Job>,
    ) -> Result<(), DriverError> {
        match request {
            Request::Compact { snapshot, reply } => {
                let applied = self.replica.status().applied;
                if snapshot.slot > applied {
                    let slot = snapshot.slot;
                    let _ = reply.send(Err(CompactError::NotApplied { slot, applied }));
                    return Ok(());
                }
                let max = self.replica.config().snapshot_bytes_max;
                if snapshot.data.len() > max {
                    let size = snapshot.data.len();
                    let _ = reply.send(Err(CompactError::TooLarge { size, max }));
                    return Ok(());
                }
                // The replica forgets the prefix now; the storage saves the snapshot before
                // any later job, so a peer's request for it (a later job) reads this one.
                // Refused only beyond the applied mark, checked above.
                if let Err(error) = self.replica.compact(snapshot.slot) {
                    let _ = reply.send(Err(error.into()));
                    return Ok(());
                }
                jobs.send(Job::Compact(snapshot))
                    .map_err(|_| DriverError::StorageThread("stopped".into()))?;
                self.in_progress += 1;
                self.compactions.push_back(reply);
            }
            Request::Status { reply } => {
                let _ = reply.send(self.replica.status());
            }
            Request::Transfer { to, reply } => {
                let _ = reply.send(self.replica.transfer_leadership(to));
            }
            Request::ChangeMembership { membership, reply } => {
                let _ = reply.send(self.replica.change_membership(membership));
            }
            Request::ReadIndex { reply } => {
                self.read_counter += 1;
                let context = self.read_counter;
                match self.replica.read_index(context) {
                    Ok(()) => {
                        self.reads.insert(context, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Request::Stats { reply } => {
                let _ = reply.send(self.stats);
            }
            Request::Propose {
                command,
                wait,
                reply,
            } => {
                if wait && self.waiters.len() >= self.config.waiters_max {
                    let _ = reply.send(Err(ProposeError::Busy { command }.into()));
                    return Ok(());
                }
                let result = match self.replica.propose(command) {
                    Ok(id) if wait => {
                        let (sender, receiver) = oneshot::channel();
                        self.waiters.insert(id, sender);
                        Ok((id, Some(receiver)))
                    }
                    Ok(id) => Ok((id, None)),
                    Err(error) => Err(error.into()),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    /// Hands out every ready: messages now, the write to the storage thread, committed entries
    /// to the application (waiting for room: backpressure).
    async fn drain(
        &mut self,
        jobs: &std::sync::mpsc::Sender<Job>,
        done: &mut mpsc::UnboundedReceiver<Result<Done, StorageError>>,
    ) -> Result<(), DriverError> {
        let stopped = || DriverError::StorageThread("stopped".into());
        while self.replica.has_ready() {
            let mut ready = self.replica.ready();
            self.transport.send_all(ready.take_messages());
            let committed: Vec<Entry> = self.replica.committed(&ready).cloned().collect();
            let snapshot = ready.take_snapshot();
            let number = ready.number();
            let job = WriteJob {
                number,
                batch: ready.take_persist(),
                messages: ready.take_persisted_messages(),
                snapshot: snapshot.clone(),
            };
            jobs.send(Job::Write(job)).map_err(|_| stopped())?;
            self.in_progress += 1;
            self.stats.writes += 1;
            for event in ready.take_events() {
                match event {
                    Event::SnapshotNeeded { follower } => {
                        jobs.send(Job::LoadSnapshot(follower))
                            .map_err(|_| stopped())?;
                        self.in_progress += 1;
                    }
                    Event::ReadReady { context, slot } => {
                        if let Some(reply) = self.reads.remove(&context) {
                            self.stats.reads_confirmed += 1;
                            let _ = reply.send(Ok(slot));
                        }
                    }
                    Event::ReadAborted { context } => {
                        if let Some(reply) = self.reads.remove(&context) {
                            let _ = reply.send(Err(ReadIndexError::Aborted));
                        }
                    }
                    _ => {}
                }
            }
            // The write is acknowledged when the storage thread reports it (`on_persisted`).
            self.replica.recycle(ready);
            if let Some(snapshot) = snapshot {
                // Handed out once the storage has saved it (and written the batch that
                // records its slot chosen): the application may then record its state as
                // applied through the snapshot's slot, and a restart restores the snapshot.
                loop {
                    let completed = done.next().await.ok_or_else(stopped)??;
                    let ours =
                        matches!(&completed, Done::Written(written) if written.number >= number);
                    self.on_completed(completed)?;
                    if ours {
                        break;
                    }
                }
                self.stats.snapshots_installed += 1;
                let _ = self.committed.send(Applied::Snapshot(snapshot)).await;
            }
            for entry in committed {
                if let Value::Command { id, .. } = &entry.value {
                    if let Some(waiter) = self.waiters.remove(id) {
                        let _ = waiter.send(entry.slot);
                    }
                }
                // A closed receiver means the application does not read entries: drop them.
                let _ = self.committed.send(Applied::Entry(entry)).await;
            }
        }
        Ok(())
    }
}

/// The next item of `stream` while `open`; otherwise never ready (a closed input is ignored).
async fn next_if<St: futures::Stream + Unpin>(stream: &mut St, open: bool) -> Option<St::Item> {
    if open {
        stream.next().await
    } else {
        futures::future::pending().await
    }
}

/// The storage thread: does jobs in order, merging every write queued behind the first one
/// (up to `group_max`, and up to the next job of another kind or the next write carrying a
/// snapshot) into one atomic write with one sync.
fn write_loop<S: Storage>(
    mut storage: S,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Result<Done, StorageError>>,
    group_max: usize,
) {
    let mut next_job = None;
    while let Some(job) = next_job.take().or_else(|| jobs.recv().ok()) {
        let outcome = match job {
            Job::Compact(snapshot) => storage
                .save_snapshot(&snapshot)
                .and_then(|()| storage.compact(snapshot.slot))
                .map(|()| Done::Compacted),
            Job::LoadSnapshot(follower) => storage
                .load_snapshot()
                .map(|snapshot| Done::SnapshotLoaded(follower, snapshot)),
            Job::Write(first) => {
                let mut number = first.number;
                let mut batch = first.batch;
                let mut messages = first.messages;
                let mut merged_writes = 1;
                while merged_writes < group_max {
                    match jobs.try_recv() {
                        Ok(Job::Write(next)) if next.snapshot.is_none() => {
                            number = next.number;
                            if next.batch.hard_state.is_some() {
                                batch.hard_state = next.batch.hard_state;
                            }
                            // The latest membership list replaces the earlier ones, as the
                            // writes one after the other would have.
                            if next.batch.memberships.is_some() {
                                batch.memberships = next.batch.memberships;
                            }
                            batch.compact_through =
                                batch.compact_through.max(next.batch.compact_through);
                            batch.runs.extend(next.batch.runs);
                            batch.must_sync |= next.batch.must_sync;
                            messages.extend(next.messages);
                            merged_writes += 1;
                        }
                        Ok(other) => {
                            next_job = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // A snapshot installed from a peer is saved (and the log compacted through it)
                // before the write that records its chosen mark: a crash in between restarts
                // from the snapshot.
                let installed = match &first.snapshot {
                    Some(snapshot) => storage
                        .save_snapshot(snapshot)
                        .and_then(|()| storage.compact(snapshot.slot)),
                    None => Ok(()),
                };
                installed
                    .and_then(|()| {
                        if batch.is_empty() {
                            Ok(())
                        } else {
                            storage.write(&mut batch)
                        }
                    })
                    .map(|()| {
                        Done::Written(Completed {
                            number,
                            messages,
                            merged_writes,
                        })
                    })
            }
        };
        let failed = outcome.is_err();
        if done.unbounded_send(outcome).is_err() || failed {
            return;
        }
    }
}
