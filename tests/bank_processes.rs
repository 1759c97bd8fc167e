//! Three `bank` example servers as separate OS processes on loopback (two shards and the
//! ledger: three Paxos groups per process, each with its own `FileStorage` directory and
//! port). Clients run transfers between eight accounts through every node, with a key per
//! transfer so that an ambiguous answer can be retried safely. Meanwhile the node running the
//! coordinator is killed with `SIGKILL` and restarted on its data, then the node leading a
//! shard; with a snapshot every 200 slots, the restarted nodes are sent snapshots. Afterwards every transfer has a definite answer, each key named one transaction,
//! nothing is left prepared or pending, every account holds exactly what its committed
//! transfers say, and no money was made or lost.
//!
//! Run: `cargo test --features net --test bank_processes -- --nocapture`
#![cfg(unix)]

mod examples_support;

use examples_support::{free_port_blocks, free_ports, text, Client, Nodes, Reply};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const NODES: usize = 3;
const SHARDS: u16 = 2;
const ACCOUNTS: usize = 8;
const DEPOSIT: i64 = 1000;
const PATIENCE: Duration = Duration::from_secs(60);

struct Cluster {
    nodes: Nodes,
    peers: String,
    client_ports: Vec<u16>,
}

impl Cluster {
    fn new() -> Cluster {
        let bases = free_port_blocks(NODES, SHARDS + 1);
        let peers = bases
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}=127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            nodes: Nodes::new("bank", NODES),
            peers,
            client_ports: free_ports(NODES),
        }
    }

    fn start(&mut self, index: usize) {
        let args = [
            "--id".to_string(),
            (index + 1).to_string(),
            "--peers".to_string(),
            self.peers.clone(),
            "--shards".to_string(),
            SHARDS.to_string(),
            "--client".to_string(),
            format!("127.0.0.1:{}", self.client_ports[index]),
            // Small snapshots, so that restores and compaction happen under the load.
            "--snapshot-every".to_string(),
            "200".to_string(),
        ];
        self.nodes.start(index, &args);
    }

    fn command(&self, index: usize, args: &[&str]) -> std::io::Result<Reply> {
        let mut client = Client::connect(self.client_ports[index], Duration::from_secs(15))?;
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        client.command(&args)
    }

    fn info(&self, index: usize, field: &str) -> Option<String> {
        let reply = self.command(index, &["INFO"]).ok()?;
        text(&reply)
            .split("\r\n")
            .find_map(|line| line.strip_prefix(&format!("{field}:")).map(str::to_owned))
    }

    /// The node whose `field` is `value`, waiting for one.
    fn find(&self, field: &str, value: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for index in 0..NODES {
                if self.nodes.started(index) && self.info(index, field).as_deref() == Some(value) {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no node has {field}:{value}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `args` through the nodes at `ports` in turn, from `first`, until a definite answer
/// (with `KEY k` a retry is the same operation; reads are always safe to retry).
fn until_definite(ports: &[u16], first: usize, args: &[&str]) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
    let mut index = first;
    loop {
        let port = ports[index % ports.len()];
        match Client::connect(port, Duration::from_secs(15)).and_then(|mut c| c.command(&args)) {
            Ok(Reply::Error(error)) if error.starts_with("TRYAGAIN") => {}
            Ok(reply) => return reply,
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "{args:?}: no definite answer");
        index += 1;
        thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug)]
struct Done {
    from: usize,
    to: usize,
    amount: i64,
    txn: String,
    committed: bool,
}

/// `+COMMITTED tN` or `-ABORTED tN ...`: whether committed, and the transaction.
fn outcome(reply: &Reply) -> (bool, String) {
    let (committed, rest) = match reply {
        Reply::Simple(text) => (true, text.strip_prefix("COMMITTED ")),
        Reply::Error(text) => (false, text.strip_prefix("ABORTED ")),
        other => panic!("TRANSFER answered {other:?}"),
    };
    let rest = rest.unwrap_or_else(|| panic!("TRANSFER answered {reply:?}"));
    let txn = rest.split_whitespace().next().unwrap().to_string();
    (committed, txn)
}

fn account(index: usize) -> String {
    format!("acct{index}")
}

#[test]
fn money_is_conserved_and_transfers_are_atomic_across_leader_kills() {
    let mut cluster = Cluster::new();
    for index in 0..NODES {
        cluster.start(index);
    }
    for index in 0..ACCOUNTS {
        let key = (1_000_000 + index).to_string();
        let amount = DEPOSIT.to_string();
        let reply = until_definite(
            &cluster.client_ports,
            index,
            &["DEPOSIT", &account(index), &amount, "KEY", &key],
        );
        assert_eq!(
            reply,
            Reply::Integer(DEPOSIT),
            "deposit into {}",
            account(index)
        );
    }
    // The accounts are on both shards: most transfers cross shards.
    let shards: std::collections::BTreeSet<String> = (0..ACCOUNTS)
        .map(|index| {
            format!(
                "{:?}",
                cluster.command(0, &["SHARD", &account(index)]).unwrap()
            )
        })
        .collect();
    assert_eq!(shards.len(), usize::from(SHARDS));

    let ports = cluster.client_ports.clone();
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<Done>>> = Arc::default();
    let mut clients = Vec::new();
    for client in 0..4u64 {
        let (ports, stop, done) = (ports.clone(), stop.clone(), done.clone());
        clients.push(thread::spawn(move || {
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(client + 1);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let from = (next() % ACCOUNTS as u64) as usize;
                let to = (from + 1 + (next() % (ACCOUNTS as u64 - 1)) as usize) % ACCOUNTS;
                let amount = 1 + (next() % 400) as i64;
                let key = (client * 1_000_000 + n).to_string();
                let args = [
                    "TRANSFER",
                    &account(from),
                    &account(to),
                    &amount.to_string(),
                    "KEY",
                    &key,
                ]
                .map(str::to_string);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let first = (next() % NODES as u64) as usize;
                let reply = until_definite(&ports, first, &args);
                let (committed, txn) = outcome(&reply);
                done.lock().unwrap().push(Done {
                    from,
                    to,
                    amount,
                    txn,
                    committed,
                });
            }
        }));
    }

    // Let transfers run, kill the coordinator's node, restart it, then the node leading
    // shard 1.
    thread::sleep(Duration::from_secs(3));
    let mut restarted = Vec::new();
    for (field, value) in [("coordinator", "here"), ("shard1_role", "Leader")] {
        let victim = cluster.lock().unwrap().find(field, value);
        let before = done.lock().unwrap().len();
        eprintln!(
            "killing node {} ({field}:{value}) after {before} transfers",
            victim + 1
        );
        cluster.lock().unwrap().nodes.kill(victim);
        thread::sleep(Duration::from_secs(3));
        cluster.lock().unwrap().start(victim);
        restarted.push(victim);
        thread::sleep(Duration::from_secs(3));
        let after = done.lock().unwrap().len();
        assert!(
            after > before,
            "no transfer finished after node {} was killed",
            victim + 1
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client thread panicked");
    }

    let cluster = cluster.lock().unwrap();
    let done = done.lock().unwrap();
    // The restarted nodes were behind their peers' compacted logs: some group was sent a
    // snapshot (and the state machines were restored from it under the load).
    let installed: u64 = restarted
        .iter()
        .flat_map(|&index| {
            let fields = ["ledger_installed", "shard1_installed", "shard2_installed"];
            fields.map(|field| cluster.info(index, field).map_or(0, |n| n.parse().unwrap()))
        })
        .sum();
    eprintln!("snapshots installed on the restarted nodes: {installed}");
    assert!(installed > 0, "no snapshot was installed");
    // One transaction per transfer (per key).
    let mut txns = BTreeMap::new();
    for transfer in done.iter() {
        assert!(
            txns.insert(transfer.txn.clone(), transfer.committed)
                .is_none(),
            "two transfers answered with {}",
            transfer.txn
        );
    }
    let committed = done.iter().filter(|transfer| transfer.committed).count();
    eprintln!("{} transfers, {committed} committed", done.len());
    assert!(committed > 0 && committed < done.len());

    // Everything settles on every node: nothing prepared or pending, and the money is all
    // there, as each node's replicas see it.
    let deadline = Instant::now() + PATIENCE;
    for index in 0..NODES {
        loop {
            let audit = cluster.command(index, &["AUDIT"]);
            let expected = Reply::Array(vec![
                Reply::Integer(DEPOSIT * ACCOUNTS as i64),
                Reply::Integer(0),
                Reply::Integer(0),
            ]);
            match audit {
                Ok(reply) if reply == expected => break,
                other => assert!(
                    Instant::now() < deadline,
                    "node {}: AUDIT {other:?}",
                    index + 1
                ),
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    // Every account holds what its committed transfers say (linearizable reads: by
    // read-index, through the logs if no leader answers).
    let mut expected = [DEPOSIT; ACCOUNTS];
    for transfer in done.iter().filter(|transfer| transfer.committed) {
        expected[transfer.from] -= transfer.amount;
        expected[transfer.to] += transfer.amount;
    }
    for (index, balance) in expected.iter().enumerate() {
        assert!(*balance >= 0);
        let reply = until_definite(&ports, index, &["BALANCE", &account(index)]);
        assert_eq!(reply, Reply::Integer(*balance), "{}", account(index));
    }
    // The ledger agrees with every answer.
    for transfer in done.iter().take(50) {
        let number = transfer.txn.trim_start_matches('t');
        let reply = until_definite(&ports, 0, &["TXN", number]);
        let expected = if transfer.committed {
            "COMMITTED"
        } else {
            "ABORTED"
        };
        assert_eq!(text(&reply), expected, "{}", transfer.txn);
    }
    let reads_by_index: u64 = (0..NODES)
        .map(|index| {
            cluster
                .info(index, "reads_by_index")
                .map_or(0, |n| n.parse().unwrap())
        })
        .sum();
    eprintln!("reads answered by read-index: {reads_by_index}");
    assert!(reads_by_index > 0, "no BALANCE or TXN went by read-index");
}
