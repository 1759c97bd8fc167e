//! The deterministic simulator: a seeded world of replicas, faults and safety checkers.
//!
//! ```
//! use synod::sim::{SimConfig, Simulation};
//!
//! let mut simulation = Simulation::new(SimConfig::new(3, 42));
//! simulation.run(500).expect("no safety violation");
//! simulation.check_liveness(2_000).expect("progress once faults stop");
//! ```

mod checkers;
mod clients;
mod cluster;
mod disk;
pub mod linearizability;

pub use checkers::Violation;
pub use cluster::{Bugs, Faults, SimConfig, SimStats, Simulation};
