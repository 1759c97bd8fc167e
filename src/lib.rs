//! # synod — embeddable Multi-Paxos for Rust
//!
//! synod's heart is a **sans-IO** Multi-Paxos [`Replica`]: a plain struct you feed messages,
//! ticks and proposals, and that hands back what to persist, what to send and what was chosen.
//! It owns no socket, file, thread or clock, so you embed it in any runtime, test it
//! deterministically, and run it in the [simulator](sim).
//!
//! ## The event loop, step by step
//!
//! A replica is built from a [`Config`] (identity, members, timeouts in ticks, limits) and the
//! state its [`Storage`] recovered:
//!
//! ```
//! use bytes::Bytes;
//! use synod::{Config, MemStorage, NodeId, Replica, Storage};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let members = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let mut storages: Vec<MemStorage> = (0..3).map(|_| MemStorage::new()).collect();
//! let mut replicas = Vec::new();
//! for (index, id) in members.iter().enumerate() {
//!     let recovered = storages[index].recover()?; // empty on a fresh node
//!     replicas.push(Replica::new(Config::new(*id, members.clone()), recovered)?);
//! }
//! # let mut network: Vec<synod::Message> = Vec::new();
//! # let mut applied: Vec<Vec<Bytes>> = vec![Vec::new(); 3];
//! # let mut proposed = false;
//! # for _round in 0..200 {
//! // 1. Time passes in ticks: elections, heartbeats and retransmissions count them.
//! for replica in &mut replicas {
//!     replica.tick();
//! }
//! // 2. Messages from peers go to `step`; bad input is an Err, never a panic.
//! for message in std::mem::take(&mut network) {
//!     let to = replicas.iter().position(|r| r.id() == message.to).unwrap();
//!     replicas[to].step(message)?;
//! }
//! // 3. Commands go to `propose` (on a follower they are forwarded to the leader).
//! if let Some(leader) = replicas.iter_mut().find(|r| r.is_leader()) {
//!     # if !proposed {
//!     leader.propose(Bytes::from_static(b"set x = 1"))?;
//!     # proposed = true; }
//! }
//! // 4. Drain the work, in this order.
//! for (index, replica) in replicas.iter_mut().enumerate() {
//!     while replica.has_ready() {
//!         let mut ready = replica.ready();
//!         network.extend(ready.take_messages()); // safe to send before the write
//!         storages[index].write(ready.persist_mut())?; // atomic; fsync if must_sync
//!         network.extend(ready.take_persisted_messages()); // promises: only once durable
//!         for entry in replica.committed(&ready) {
//!             // chosen entries, in slot order, exactly once, borrowed from the log
//!             if let synod::Value::Command { data, .. } = &entry.value {
//!                 applied[index].push(data.clone()); // shares the bytes, copies none
//!             }
//!         }
//!         replica.advance(ready)?; // or on_persisted(number) when the write finishes later
//!     }
//! }
//! # }
//! # for log in &applied { assert_eq!(log, &vec![Bytes::from_static(b"set x = 1")]); }
//! # Ok(())
//! # }
//! ```
//!
//! The contracts behind that loop:
//! - **Persistence before promise.** A Promise or Accepted is never in `take_messages`; it
//!   waits in `take_persisted_messages` for the write it depends on. The leader counts its own
//!   vote only once its write is acknowledged.
//! - **Asynchronous storage.** You may take the next ready before the previous write finishes;
//!   acknowledge writes in order with [`Replica::on_persisted`]. One fsync then covers every
//!   proposal of the batch (group commit). A number never handed out, one acknowledged out of
//!   order, or a ready handed to another replica's `advance` is refused with an
//!   [`AcknowledgeError`] (misuse is an error, never a panic).
//! - **Time is ticks.** Randomized election timeouts come from a seeded RNG
//!   ([`Config::seed`]): the same inputs in the same order give the same outputs.
//! - **Bounded.** Every window and backlog has a limit in [`Config`]; past it
//!   [`Replica::propose`] returns [`ProposeError::Busy`] with the command handed back.
//! - **Shared, not copied.** Entries travel in shared runs ([`Entries`]): the commands a
//!   leader accepted since its last ready become one run, which its log, its write
//!   ([`WriteBatch::runs`]) and the Accept to every follower all reference; a follower keeps
//!   the run an Accept brought. A storage that keeps entries in memory can keep the runs as
//!   they come ([`MemStorage`] does): one reference count per batch, none per entry. The
//!   runs of consecutive readies are parts of one page, written in place (the crate's only
//!   `unsafe` code, in `src/page.rs`), so even one command per ready allocates nothing per
//!   entry, and a holder keeps consecutive runs as one.
//! - **Snapshots and compaction.** Once your state machine's snapshot of slot `s` is durable,
//!   [`Replica::compact`]`(s)` and [`Storage::compact`]`(s)` drop the log up to `s`; at a
//!   restart, restore the snapshot and pass `s` as [`Config::applied`] (a lower mark is
//!   refused). A replica never promises a candidate that needs slots it compacted, and a
//!   follower that needs them is reported with [`Event::SnapshotNeeded`]: answer with
//!   [`Replica::send_snapshot`] and the snapshot you saved. The follower's next ready hands it
//!   out ([`Ready::take_snapshot`]): restore the state machine from it, save it and compact
//!   the storage through its slot before writing that ready's batch; the follower then fetches
//!   the slots after it (`tests/replica_snapshots.rs` shows it end to end).
//! - **Reads.** A read through the log (proposed as a command) is linearizable and costs a
//!   slot. [`Replica::read_index`] costs one round of heartbeats shared by every read asked
//!   before the same ready and no write: the leader reports [`Event::ReadReady`] with a slot,
//!   and you answer from your state machine once it has applied that slot
//!   (`tests/replica_reads.rs`). A follower asks the leader for the slot and reports it the
//!   same way. With [`Config::lease_ticks`] a leader holding a lease answers at once, no
//!   round (`tests/replica_leases.rs`; read the clock assumptions first).
//! - **Membership.** Start a node to add with [`Config::joining`]; at the leader,
//!   [`Replica::change_membership`] with the new [`Membership`] (voters and learners, one
//!   change at a time). Once the change is chosen, every replica reports
//!   [`Event::MembershipChanged`] and the new membership governs every later slot; the
//!   storage keeps it ([`WriteBatch::memberships`], [`Recovered::memberships`]; a founding
//!   member writes its first one with its first ready), so `Config::members` and
//!   `Config::join` are read at a node's first start only. Add a node as a learner and
//!   promote it once it has caught up (`tests/replica_membership.rs`); with the TCP
//!   transport, give the members its address first (`TcpTransport::peers`, feature `net`):
//!
//! ```
//! # use synod::{Config, Membership, NodeId};
//! let joining = Config::joining(NodeId(4)); // knows no membership, never campaigns yet
//! assert!(joining.join);
//! let learner = Membership::new([NodeId(1), NodeId(2), NodeId(3)], [NodeId(4)]);
//! let promoted = Membership::new([NodeId(1), NodeId(2), NodeId(3), NodeId(4)], []);
//! assert!(learner.validate().is_ok() && promoted.is_voter(NodeId(4)));
//! // leader.change_membership(learner)?; ... then, once n4 caught up:
//! // leader.change_membership(promoted)?;
//! ```
//!
//! ## Modules
//! - [`replica`]: the Multi-Paxos replica (the protocol is described there).
//! - [`paxos`]: single-decree Paxos (the Synod protocol): one value per instance, with the same
//!   face as the replica — the building block for non-blocking commit.
//! - [`storage`]: the [`Storage`] trait, [`MemStorage`] and the durable [`FileStorage`]
//!   (checksummed segments, fsync, torn-tail recovery).
//! - [`transport`]: the [`Transport`] trait and the framed wire [`Codec`].
//! - [`driver`]: runs a replica over a storage and a transport with `futures`, with group
//!   commit.
//! - [`sim`]: the deterministic simulator with fault injection, safety checkers and a
//!   linearizability checker; [`sim::twopc`] and [`sim::locks`] put two-phase commit and the
//!   lock service under faults with their own checkers.
//! - [`session`]: client sessions — exactly-once application of retried requests.
//! - [`twopc`]: two-phase commit (coordinator and participant, presumed abort), with a decision
//!   log that can live in a Paxos group so that a coordinator crash blocks no one.
//! - [`lock`]: a distributed lock service state machine (sessions, leases, FIFO exclusive and
//!   shared locks, fencing tokens, lock-delay), with log time proposed by the leader.
//! - [`ring`]: a consistent-hash ring (virtual nodes, weights, exact transfer lists) to place
//!   keys on Paxos groups.
//! - [`kv`]: a deterministic key-value state machine built on sessions (the simulator's
//!   standard workload).
//! - [`quorum`], [`types`], [`message`], [`config`], [`error`]: the vocabulary.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
pub mod driver;
pub mod error;
pub mod kv;
pub mod lock;
mod log;
pub mod message;
mod page;
pub mod paxos;
pub mod quorum;
pub mod replica;
pub mod ring;
pub mod session;
pub mod sim;
pub mod storage;
pub mod transport;
pub mod twopc;
pub mod types;

pub use config::Config;
pub use error::{
    AcknowledgeError, CompactError, ConfigError, DecodeError, MembershipError, ProposeError,
    ReadError, SendSnapshotError, StepError, StorageError, TransferError,
};
pub use message::{Body, Message};
pub use replica::{Event, Ready, Replica, Role, Status};
pub use storage::{
    FileStorage, FileStorageOptions, MemStorage, Recovered, Snapshot, Storage, WriteBatch,
};
pub use transport::codec::Codec;
pub use transport::Transport;
pub use types::{
    Ballot, Entries, Entry, HardState, Membership, MembershipAt, NodeId, ProposalId, Slot, Value,
};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
