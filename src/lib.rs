//! synod
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod kv;
pub mod message;
pub mod quorum;
pub mod session;
pub mod sim;
pub mod storage;
pub mod transport;
pub mod types;

pub use config::Config;
pub use error::{ConfigError, DecodeError, ProposeError, StepError, StorageError};
pub use message::{Body, Message};
pub use storage::{MemStorage, Recovered, Storage, WriteBatch};
pub use transport::Transport;
pub use types::{Ballot, Entry, HardState, NodeId, ProposalId, Slot, Value};
