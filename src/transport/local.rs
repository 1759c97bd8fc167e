//! An in-process transport over futures channels: for tests, examples and single-process
//! clusters.

use super::Transport;
use crate::message::Message;
use crate::types::NodeId;
use futures::channel::mpsc;
use std::collections::BTreeMap;

/// Sends messages to in-process peers through bounded channels; a full or closed channel drops
/// the message (Paxos tolerates loss), never blocks.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    peers: BTreeMap<NodeId, mpsc::Sender<Message>>,
    dropped: u64,
}

impl LocalTransport {
    /// Creates one inbox per node, each holding up to `capacity` messages, and a transport for
    /// each node that can reach all the others. Returns, per node in `nodes` order, its
    /// transport and its inbox (feed the inbox to the driver as its inbound stream).
    pub fn mesh(
        nodes: &[NodeId],
        capacity: usize,
    ) -> Vec<(LocalTransport, mpsc::Receiver<Message>)> {
        let mut senders = BTreeMap::new();
        let mut receivers = Vec::new();
        for id in nodes {
            let (sender, receiver) = mpsc::channel(capacity);
            senders.insert(*id, sender);
            receivers.push(receiver);
        }
        receivers
            .into_iter()
            .map(|receiver| {
                (
                    LocalTransport {
                        peers: senders.clone(),
                        dropped: 0,
                    },
                    receiver,
                )
            })
            .collect()
    }

    /// Messages dropped so far (full inbox, unknown or stopped peer).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Transport for LocalTransport {
    fn send(&mut self, message: Message) {
        let delivered = match self.peers.get_mut(&message.to) {
            Some(sender) => sender.try_send(message).is_ok(),
            None => false,
        };
        if !delivered {
            self.dropped += 1;
        }
    }
}
