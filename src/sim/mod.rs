//! The deterministic simulator and its checkers.

pub mod linearizability;
