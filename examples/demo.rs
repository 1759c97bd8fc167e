//! A local replicated cluster in one process: three replicas, each on its own durable
//! `FileStorage` directory (checksummed segments, fsync), elect a leader, replicate commands,
//! lose their leader, elect another, restart the old one from disk, and end with identical
//! logs.
//!
//! Run: `cargo run --example demo`

use bytes::Bytes;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use synod::replica::Event;
use synod::{Config, FileStorage, FileStorageOptions, Message, NodeId, Replica, Storage, Value};

struct Node {
    replica: Option<Replica>,
    /// `None` while the node is down (its files closed, their lock released).
    storage: Option<FileStorage>,
    directory: PathBuf,
    config: Config,
    log: Vec<String>,
}

struct Cluster {
    nodes: Vec<Node>,
    network: VecDeque<Message>,
    ticks: u64,
}

impl Cluster {
    fn new(size: u64, root: &Path) -> Result<Cluster, Box<dyn std::error::Error>> {
        let members: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut nodes = Vec::new();
        for id in &members {
            let config = Config::new(*id, members.clone());
            let directory = root.join(format!("node-{}", id.0));
            let mut storage = open(&directory, &config)?;
            let replica = Replica::new(config.clone(), storage.recover()?)?;
            nodes.push(Node {
                replica: Some(replica),
                storage: Some(storage),
                directory,
                config,
                log: Vec::new(),
            });
        }
        Ok(Cluster {
            nodes,
            network: VecDeque::new(),
            ticks: 0,
        })
    }

    /// One round: a tick for everyone, then deliver and drain until the network is quiet.
    fn round(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.ticks += 1;
        for node in &mut self.nodes {
            if let Some(replica) = &mut node.replica {
                replica.tick();
            }
        }
        for _ in 0..1000 {
            self.drain()?;
            if self.network.is_empty() {
                break;
            }
            while let Some(message) = self.network.pop_front() {
                let node = &mut self.nodes[message.to.0 as usize - 1];
                if let Some(replica) = &mut node.replica {
                    replica.step(message)?;
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        for node in &mut self.nodes {
            let (Some(replica), Some(storage)) = (&mut node.replica, &mut node.storage) else {
                continue;
            };
            while replica.has_ready() {
                let mut ready = replica.ready();
                self.network.extend(ready.take_messages());
                storage.write(ready.persist_mut())?;
                self.network.extend(ready.take_persisted_messages());
                for entry in replica.committed(&ready) {
                    if let Value::Command { data, .. } = &entry.value {
                        node.log.push(String::from_utf8_lossy(data).into_owned());
                    }
                }
                for event in ready.take_events() {
                    if let Event::BecameLeader { ballot } = event {
                        println!(
                            "[tick {:>3}] {} leads with ballot {ballot}",
                            self.ticks,
                            replica.id()
                        );
                    }
                }
                replica.advance(ready)?; // its own ready, acknowledged in order
            }
        }
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.replica.as_ref().is_some_and(Replica::is_leader))
    }

    fn wait_for_leader(&mut self) -> Result<usize, Box<dyn std::error::Error>> {
        for _ in 0..500 {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            self.round()?;
        }
        Err("no leader elected".into())
    }

    fn propose(&mut self, node: usize, command: String) -> Result<(), Box<dyn std::error::Error>> {
        let replica = self.nodes[node].replica.as_mut().ok_or("node is down")?;
        replica
            .propose(Bytes::from(command))
            .map_err(|error| error.to_string())?;
        Ok(())
    }
}

fn open(directory: &Path, config: &Config) -> Result<FileStorage, synod::StorageError> {
    FileStorage::open(
        directory,
        config.cluster_id,
        config.id,
        FileStorageOptions::default(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::temp_dir().join(format!("synod-demo-{}", std::process::id()));
    let mut cluster = Cluster::new(3, &root)?;
    println!(
        "three replicas, durable storage under {}; electing a leader...",
        root.display()
    );
    let leader = cluster.wait_for_leader()?;
    for i in 1..=5 {
        cluster.propose(leader, format!("set k{i} = {i}"))?;
    }
    // A follower proposes too: the command is forwarded to the leader.
    let follower = (leader + 1) % 3;
    cluster.propose(follower, "set via-follower = yes".to_string())?;
    for _ in 0..3 {
        cluster.round()?;
    }
    println!(
        "committed on every replica: {:?}",
        cluster.nodes[follower].log
    );

    println!("crashing the leader {}...", cluster.nodes[leader].config.id);
    cluster.nodes[leader].replica = None;
    cluster.nodes[leader].storage = None; // a dead process holds no files (nor their lock)
    cluster
        .network
        .retain(|message| message.to != cluster.nodes[leader].config.id);
    let new_leader = cluster.wait_for_leader()?;
    for i in 6..=8 {
        cluster.propose(new_leader, format!("set k{i} = {i}"))?;
    }
    for _ in 0..3 {
        cluster.round()?;
    }

    println!(
        "restarting {} from its storage...",
        cluster.nodes[leader].config.id
    );
    let node = &mut cluster.nodes[leader];
    node.log.clear(); // its state machine is rebuilt from the log
                      // Reopen the files as a fresh process would: recovery checks every record's checksum.
    let mut storage = open(&node.directory, &node.config)?;
    node.replica = Some(Replica::new(node.config.clone(), storage.recover()?)?);
    node.storage = Some(storage);
    for _ in 0..30 {
        cluster.round()?;
    }
    for node in &cluster.nodes {
        println!(
            "{}: {} commands: {:?}",
            node.config.id,
            node.log.len(),
            node.log
        );
    }
    let first = &cluster.nodes[0].log;
    if cluster.nodes.iter().any(|node| &node.log != first) || first.len() != 9 {
        return Err("replicas disagree".into());
    }
    println!("all three replicas applied the same 9 commands in the same order.");
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
