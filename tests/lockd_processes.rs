//! Three `lockd` example servers as separate OS processes on loopback, each with its own
//! `FileStorage` directory. A client holds a lock and keeps its session alive; another waits
//! for the lock. The leader is killed with `SIGKILL`: the holder keeps its lock through the
//! new leader (its keep-alives go on, and the new leader's grace covers the changeover). Then
//! the holder goes quiet: its lease runs out in log time, the lock-delay passes, and the
//! waiter gets the lock with a larger fencing token. The killed node restarts on its data and
//! catches up to the same holder.
//!
//! Run: `cargo test --features net --test lockd_processes -- --nocapture`
#![cfg(unix)]

mod examples_support;

use examples_support::{free_ports, peers_argument, text, Client, Nodes, Reply};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const NODES: usize = 3;
const PATIENCE: Duration = Duration::from_secs(20);

struct Cluster {
    nodes: Nodes,
    peers: String,
    client_ports: Vec<u16>,
}

impl Cluster {
    fn new() -> Cluster {
        let ports = free_ports(2 * NODES);
        let peers = peers_argument(&ports[..NODES]);
        Cluster {
            nodes: Nodes::new("lockd", NODES),
            peers,
            client_ports: ports[NODES..].to_vec(),
        }
    }

    fn start(&mut self, index: usize) {
        let args = [
            "--id".to_string(),
            (index + 1).to_string(),
            "--peers".to_string(),
            self.peers.clone(),
            "--client".to_string(),
            format!("127.0.0.1:{}", self.client_ports[index]),
            // A lock-delay of 1 s, a grace of 2 s: the scenario's waits stay short.
            "--lock-delay".to_string(),
            "100".to_string(),
            "--grace".to_string(),
            "200".to_string(),
        ];
        self.nodes.start(index, &args);
    }

    fn client(&self, index: usize) -> Client {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match Client::connect(self.client_ports[index], Duration::from_secs(15)) {
                Ok(client) => return client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("node {} never served: {error}", index + 1),
            }
        }
    }

    fn info(&self, index: usize, field: &str) -> Option<String> {
        let reply = Client::connect(self.client_ports[index], Duration::from_secs(5))
            .ok()?
            .command(&[b"INFO"])
            .ok()?;
        text(&reply)
            .split("\r\n")
            .find_map(|line| line.strip_prefix(&format!("{field}:")).map(str::to_owned))
    }

    fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for index in 0..NODES {
                if self.nodes.started(index)
                    && self.info(index, "role").as_deref() == Some("Leader")
                {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The holders of `name`, linearizably (read-index at node `index`), retrying while no
    /// leader confirms.
    fn holders(&self, index: usize, name: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.client(index).command(&[b"HOLDERS", name.as_bytes()]) {
                Ok(Reply::Array(items)) => return items.iter().map(text).collect(),
                Ok(Reply::Error(error))
                    if error.starts_with("TRYAGAIN") && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(50));
                }
                other => panic!("HOLDERS answered {other:?}"),
            }
        }
    }
}

fn integer(reply: std::io::Result<Reply>) -> i64 {
    match reply {
        Ok(Reply::Integer(value)) => value,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn open(client: &mut Client, id: &str, lease: &str) -> String {
    match client.command(&[b"OPEN", id.as_bytes(), lease.as_bytes()]) {
        Ok(Reply::Array(items)) => match items[0] {
            Reply::Integer(session) => session.to_string(),
            ref other => panic!("OPEN answered {other:?}"),
        },
        other => panic!("OPEN answered {other:?}"),
    }
}

#[test]
fn a_lock_survives_a_sigkilled_leader_and_passes_on_when_its_holder_goes_quiet() {
    let mut cluster = Cluster::new();
    for index in 0..NODES {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader();
    let (near, far) = ((leader + 1) % NODES, (leader + 2) % NODES);

    // Alice: a 3 s lease, through a follower. Bob: a long lease, through the other one.
    let mut alice = cluster.client(near);
    let alice_session = open(&mut alice, "1", "300");
    let alice_token = integer(alice.command(&[b"ACQUIRE", alice_session.as_bytes(), b"printer"]));
    // Alice, restarted, opens her session again (through the other follower): the answer
    // lists the lock she holds.
    let mut alice_again = cluster.client(far);
    match alice_again.command(&[b"OPEN", b"1", b"300"]) {
        Ok(Reply::Array(items)) => {
            assert_eq!(items[0], Reply::Integer(alice_session.parse().unwrap()));
            assert_eq!(
                items[2],
                Reply::Array(vec![Reply::Bulk(Some(
                    format!("printer exclusive {alice_token}").into_bytes()
                ))])
            );
        }
        other => panic!("OPEN answered {other:?}"),
    }
    let mut bob = cluster.client(far);
    let bob_session = open(&mut bob, "2", "100000");
    assert_eq!(
        cluster.holders(far, "printer"),
        [format!("{alice_session} exclusive {alice_token}")]
    );
    // Bob waits for the lock, on his own thread.
    let bob_wait = {
        let session = bob_session.clone();
        thread::spawn(move || {
            let mut bob = bob;
            let started = Instant::now();
            let token = integer(bob.command(&[b"ACQUIRE", session.as_bytes(), b"printer"]));
            (token, started.elapsed())
        })
    };
    // Alice keeps her session alive every half second, through whichever of the two
    // followers answers.
    let alice_quiet = Arc::new(AtomicBool::new(false));
    let keep_alive = {
        let quiet = alice_quiet.clone();
        let ports = [cluster.client_ports[near], cluster.client_ports[far]];
        let session = alice_session.clone();
        thread::spawn(move || {
            while !quiet.load(Ordering::Relaxed) {
                for port in ports {
                    let renewed = Client::connect(port, Duration::from_secs(5))
                        .and_then(|mut client| client.command(&[b"KEEPALIVE", session.as_bytes()]));
                    if matches!(renewed, Ok(Reply::Integer(_))) {
                        break;
                    }
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
    };

    // The leader dies. Twice Alice's lease later she still holds the lock.
    cluster.nodes.kill(leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    thread::sleep(Duration::from_secs(6));
    assert_eq!(
        cluster.holders(new_leader, "printer"),
        [format!("{alice_session} exclusive {alice_token}")],
        "Alice lost her lock across the change of leader"
    );
    assert!(!bob_wait.is_finished(), "Bob got a lock Alice still held");

    // Alice goes quiet: her lease ends, then the lock-delay, then Bob has the lock.
    alice_quiet.store(true, Ordering::Relaxed);
    keep_alive.join().unwrap();
    let quiet_at = Instant::now();
    let (bob_token, _) = bob_wait.join().expect("Bob's wait");
    eprintln!(
        "Bob got the lock {:.1} s after Alice went quiet: token {bob_token} (Alice's {alice_token})",
        quiet_at.elapsed().as_secs_f64()
    );
    assert!(bob_token > alice_token, "fencing tokens must grow");
    assert_eq!(
        cluster.holders(new_leader, "printer"),
        [format!("{bob_session} exclusive {bob_token}")]
    );
    // Alice's session is gone: her next keep-alive is refused.
    let refused = cluster
        .client(new_leader)
        .command(&[b"KEEPALIVE", alice_session.as_bytes()]);
    assert!(
        matches!(&refused, Ok(Reply::Error(error)) if error.contains("unknown session")),
        "{refused:?}"
    );

    // The killed node restarts on its data and catches up.
    cluster.start(leader);
    let deadline = Instant::now() + PATIENCE;
    while cluster.holders(leader, "printer") != [format!("{bob_session} exclusive {bob_token}")] {
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
