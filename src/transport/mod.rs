//! Moving messages between replicas: the [`Transport`] trait and the wire codec.
//!
//! Paxos tolerates loss, duplication and reordering, so a transport is best effort: `send`
//! never blocks the replica and may drop a message (a full queue, a broken connection).

pub mod codec;
mod local;
#[cfg(feature = "net")]
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

pub use local::LocalTransport;

use crate::message::Message;

/// Delivers messages to peers, best effort.
pub trait Transport {
    /// Queues `message` for delivery to `message.to`. Must not block; may drop the message.
    fn send(&mut self, message: Message);

    /// Queues every message in `messages`, in order.
    fn send_all(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.send(message);
        }
    }
}

impl Transport for Vec<Message> {
    fn send(&mut self, message: Message) {
        self.push(message);
    }
}
