//! Simulated key-value clients: each opens a session, then issues one operation at a time
//! (get, put, delete, compare-and-swap on a few shared keys) through a random replica,
//! retrying through another replica on timeout under the same session header, so retries apply
//! exactly once. Every operation is recorded with its invocation and response steps; the
//! history is checked for linearizability at the end.

use super::linearizability::{self, CheckOptions, CheckResult, Completion, KvModel};
use crate::kv::{Command, Operation, Output, Response};
use crate::session::{ClientId, RequestHeader};
use crate::types::NodeId;
use bytes::Bytes;

/// Steps a client waits for a response before retrying through another replica.
const RETRY_STEPS: u64 = 60;
/// Keys the clients share (few, so operations conflict).
const KEYS: u64 = 3;

/// What a client is waiting for.
#[derive(Clone, Debug)]
enum Waiting {
    /// Nothing: ready for its next operation.
    Idle,
    /// The response to OpenSession, sent at `sent_at`.
    Session { sent_at: u64 },
    /// The response to history operation `index`, last sent at `sent_at`.
    Request {
        index: usize,
        header: RequestHeader,
        sent_at: u64,
    },
}

#[derive(Clone, Debug)]
struct Client {
    session: Option<ClientId>,
    sequence: u64,
    waiting: Waiting,
}

/// A command a client wants proposed at `node`.
#[derive(Clone, Debug)]
pub(crate) struct Send {
    pub(crate) client: usize,
    /// The request's sequence number (0 for OpenSession), to match the response.
    pub(crate) sequence: u64,
    pub(crate) node: NodeId,
    pub(crate) command: Bytes,
}

/// The clients and the history they produce.
#[derive(Debug)]
pub(crate) struct Clients {
    clients: Vec<Client>,
    history: Vec<linearizability::Operation<Operation, Output>>,
    values: u64,
}

impl Clients {
    pub(crate) fn new(count: usize) -> Clients {
        let client = Client {
            session: None,
            sequence: 0,
            waiting: Waiting::Idle,
        };
        Clients {
            clients: vec![client; count],
            history: Vec::new(),
            values: 0,
        }
    }

    /// Operations issued so far, and how many returned.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let returned = self
            .history
            .iter()
            .filter(|operation| matches!(operation.completion, Completion::Returned { .. }))
            .count();
        (self.history.len(), returned)
    }

    /// What the clients send at step `now`: new operations (if `issue`), and retries.
    /// `below(n)` draws from the simulation's RNG.
    pub(crate) fn step(
        &mut self,
        now: u64,
        nodes: u64,
        issue: bool,
        below: &mut dyn FnMut(u64) -> u64,
    ) -> Vec<Send> {
        let mut sends = Vec::new();
        for index in 0..self.clients.len() {
            let node = NodeId(1 + below(nodes));
            match self.clients[index].waiting.clone() {
                Waiting::Idle if issue && below(4) == 0 => match self.clients[index].session {
                    None => {
                        self.clients[index].waiting = Waiting::Session { sent_at: now };
                        sends.push(Send {
                            client: index,
                            sequence: 0,
                            node,
                            command: Bytes::from(Command::OpenSession.encode()),
                        });
                    }
                    Some(session) => {
                        let operation = self.pick_operation(below);
                        let client = &mut self.clients[index];
                        client.sequence += 1;
                        let header = RequestHeader {
                            client: session,
                            sequence: client.sequence,
                            acknowledged_below: client.sequence,
                        };
                        let command = Command::Request {
                            header,
                            operation: operation.clone(),
                        };
                        self.history.push(linearizability::Operation::pending(
                            index as u64,
                            now,
                            operation,
                        ));
                        let history_index = self.history.len() - 1;
                        self.clients[index].waiting = Waiting::Request {
                            index: history_index,
                            header,
                            sent_at: now,
                        };
                        sends.push(Send {
                            client: index,
                            sequence: header.sequence,
                            node,
                            command: Bytes::from(command.encode()),
                        });
                    }
                },
                Waiting::Session { sent_at } if now - sent_at >= RETRY_STEPS => {
                    // A lost OpenSession at worst leaves an unused session behind.
                    self.clients[index].waiting = Waiting::Session { sent_at: now };
                    sends.push(Send {
                        client: index,
                        sequence: 0,
                        node,
                        command: Bytes::from(Command::OpenSession.encode()),
                    });
                }
                Waiting::Request {
                    index: history_index,
                    header,
                    sent_at,
                } if now - sent_at >= RETRY_STEPS => {
                    let operation = self.history[history_index].input.clone();
                    let command = Command::Request { header, operation };
                    self.clients[index].waiting = Waiting::Request {
                        index: history_index,
                        header,
                        sent_at: now,
                    };
                    sends.push(Send {
                        client: index,
                        sequence: header.sequence,
                        node,
                        command: Bytes::from(command.encode()),
                    });
                }
                _ => {}
            }
        }
        sends
    }

    fn pick_operation(&mut self, below: &mut dyn FnMut(u64) -> u64) -> Operation {
        let key = Bytes::from(format!("k{}", below(KEYS)));
        self.values += 1;
        let value = Bytes::from(format!("v{}", self.values));
        match below(5) {
            0 | 1 => Operation::Get { key },
            2 => Operation::Put { key, value },
            3 => Operation::Delete { key },
            _ => {
                // Compare against a recent value of the key, so swaps sometimes succeed.
                let expected = (self.values > 1)
                    .then(|| Bytes::from(format!("v{}", 1 + below(self.values - 1))));
                Operation::CompareAndSwap {
                    key,
                    expected,
                    new: Some(value),
                }
            }
        }
    }

    /// Client `client` received, at step `now`, the `response` to its request numbered
    /// `sequence` (0: an OpenSession). Answers to requests it no longer waits for (a retried
    /// copy applied later, answered from the session cache) are ignored.
    pub(crate) fn on_response(
        &mut self,
        client: usize,
        sequence: u64,
        now: u64,
        response: Response,
    ) {
        match (self.clients[client].waiting.clone(), response) {
            (Waiting::Request { header, .. }, _) if header.sequence != sequence => {}
            (Waiting::Session { .. }, _) if sequence != 0 => {}
            (Waiting::Session { .. }, Response::SessionOpened { client: session }) => {
                self.clients[client].session = Some(session);
                self.clients[client].waiting = Waiting::Idle;
            }
            (Waiting::Request { index, .. }, Response::Output(output)) => {
                let operation = &mut self.history[index];
                operation.completion = Completion::Returned { time: now, output };
                self.clients[client].waiting = Waiting::Idle;
            }
            (Waiting::Request { .. }, Response::Error(_)) => {
                // Refused, expired or its response dropped: the outcome is unknown, so the
                // operation stays pending (it may or may not have taken effect). Start over
                // with a fresh session.
                self.clients[client].session = None;
                self.clients[client].waiting = Waiting::Idle;
            }
            _ => {} // a late answer to something the client gave up on
        }
    }

    /// Checks the history for linearizability.
    pub(crate) fn check(&self) -> Result<(), String> {
        let options = CheckOptions {
            steps_max: 5_000_000,
            ..CheckOptions::default()
        };
        match linearizability::check(&KvModel, &self.history, &options) {
            Ok(CheckResult::Linearizable) => Ok(()),
            Ok(CheckResult::Violation(violation)) => Err(format!("{violation}")),
            Ok(CheckResult::Unknown(unknown)) => {
                Err(format!("undecided within the step budget: {unknown:?}"))
            }
            Err(error) => Err(format!("malformed history: {error}")),
        }
    }
}
