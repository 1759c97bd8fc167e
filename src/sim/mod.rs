//! The deterministic simulator: a seeded world of replicas, faults and safety checkers.
//!
//! ```
//! use synod::sim::{SimConfig, Simulation};
//!
//! let mut simulation = Simulation::new(SimConfig::new(3, 42)).expect("a valid config");
//! simulation.run(500).expect("no safety violation");
//! simulation.check_liveness(2_000).expect("progress once faults stop");
//! ```
//!
//! Set [`SimConfig::file_disks`] to a directory (a tmpfs such as `/dev/shm` is fastest) and
//! every node also writes a real [`FileStorage`](crate::FileStorage) there: crashes tear the
//! unfinished write at a byte, restarts recover from the files and must find exactly what was
//! durable, and corruption flips real bytes that recovery must refuse.
//!
//! With [`Faults::membership`] the leader is asked, at random, to change the membership
//! (add, remove, promote, demote or replace members, starting [`SimConfig::spare_nodes`] as
//! joining nodes first): the checkers then count each slot's votes with the voters of the
//! membership that governs it, require every node to report the same membership for a slot,
//! and every election to be started by a voter.
//!
//! Some faults open windows inside the handling of one ready, where real deployments have
//! them and a loop that drains every ready at once does not: a node leaves its ready
//! undrained for a few steps while messages and ticks go on arriving
//! ([`Faults::ready_hold`]); a node crashes after a ready's messages and before its write,
//! or after its write and before the messages that waited for it
//! ([`Faults::crash_in_ready`]); a node crashes after saving a snapshot and before
//! compacting its storage through it, or after an installed snapshot's compaction and
//! before the ready's write ([`Faults::crash_in_snapshot`]). Snapshots are saved in the
//! node's storage as a driver saves them (and, with file disks, recovered from the
//! snapshot file), and every restart requires that the entries a node recovers at or below
//! its durable chosen mark are the values chosen there (`check_recovered_chosen_were_chosen`)
//! and that the replica starts from what its disk holds (`check_restart_from_disk`).
//!
//! [`twopc`] is a second world, for two-phase commit: coordinators that crash and take over
//! from a decision log, participants that crash, a lossy network, and the 2PC checkers
//! (atomicity, validity, termination). [`locks`] is a third, for the lock service: clients
//! on clocks of their own that stall, leaders that fail, and the exclusion and fencing
//! checkers.

mod checkers;
mod clients;
mod cluster;
mod config;
mod disk;
pub mod linearizability;
pub mod locks;
pub mod twopc;

pub use checkers::Violation;
pub use cluster::{SimSetupError, Simulation};
pub use config::{Bugs, Faults, SimConfig, SimStats};
