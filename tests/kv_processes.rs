//! Three `kv` example servers as separate OS processes on loopback, each with its own
//! `FileStorage` directory, replicating over TCP. Clients write under load; the leader's
//! process is killed with `SIGKILL` mid-load and restarted on the same directory and ports.
//! Afterwards every acknowledged write is on every replica, and every replica applied the
//! same entries in the same order (equal log digests at equal slots).
//!
//! The test builds the example itself, for its own profile and features, and runs it as it
//! is in the working tree, never a stale binary (`examples_support::build_example`).
//!
//! Run: `cargo test --all-features --test kv_processes -- --nocapture`
#![cfg(unix)]

mod examples_support;

use examples_support::{build_example, free_ports, peers_argument, text, Client, Reply};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const NODES: usize = 3;
const WRITERS: usize = 4;
/// Waits below end as soon as their condition holds; this bounds them on a slow machine.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Building the example.

/// The `kv` example's executable, built for this test's profile and features.
fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_example("kv"))
}

/// `key:value` lines of a reply (INFO, SYNOD.DIGEST), as a map.
fn fields(reply: &Reply) -> HashMap<String, String> {
    text(reply)
        .split(['\r', '\n', ' '])
        .filter_map(|item| item.split_once(':'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn query(port: u16, args: &[&[u8]]) -> std::io::Result<Reply> {
    Client::connect(port, Duration::from_secs(15))?.command(args)
}

// ---------------------------------------------------------------------------------------
// The cluster of processes.

/// Three server processes; every one still running is killed when this is dropped, also
/// when the test fails.
struct Cluster {
    root: TempDir,
    peers: String,
    client_ports: Vec<u16>,
    children: Vec<Option<Child>>,
    starts: Vec<usize>,
    /// Options every node gets on top of the usual ones.
    extra: Vec<String>,
    /// Options of one node, on top of those (`--join`, say).
    node_options: Vec<Vec<String>>,
    /// A node's own `--peers`, instead of `peers`.
    node_peers: Vec<Option<String>>,
    /// Every node's peer address, by index (for `SYNOD.SETPEER`).
    peer_ports: Vec<u16>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            self.print_logs();
        }
    }
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with_options(&[])
    }

    fn with_options(extra: &[&str]) -> Cluster {
        Cluster::of(NODES, extra)
    }

    /// `nodes` nodes in `--peers` (start only those the test wants).
    fn of(nodes: usize, extra: &[&str]) -> Cluster {
        let ports = free_ports(2 * nodes);
        let peers = peers_argument(&ports[..nodes]);
        Cluster {
            root: TempDir::new().unwrap(),
            peers,
            client_ports: ports[nodes..].to_vec(),
            children: (0..nodes).map(|_| None).collect(),
            starts: vec![0; nodes],
            extra: extra.iter().map(|option| option.to_string()).collect(),
            node_options: vec![Vec::new(); nodes],
            node_peers: vec![None; nodes],
            peer_ports: ports[..nodes].to_vec(),
        }
    }

    fn data(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("node-{}", index + 1))
    }

    fn server(&self, index: usize, client_port: u16, log_name: &str) -> Command {
        let log = File::create(self.root.path().join(log_name)).unwrap();
        let mut command = Command::new(server_binary());
        command
            .arg("--id")
            .arg((index + 1).to_string())
            .arg("--peers")
            .arg(self.node_peers[index].as_ref().unwrap_or(&self.peers))
            .arg("--client")
            .arg(format!("127.0.0.1:{client_port}"))
            .arg("--data")
            .arg(self.data(index))
            .args(["--cluster-id", "77", "--tick-ms", "10"])
            // Snapshots and compaction every few hundred slots: the restarted leader finds the
            // others compacted past its log and is sent a snapshot.
            .args(["--snapshot-every", "200"])
            .args(&self.extra)
            .args(&self.node_options[index])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    fn start(&mut self, index: usize) {
        assert!(self.children[index].is_none());
        self.starts[index] += 1;
        let log_name = format!("node-{}.{}.log", index + 1, self.starts[index]);
        let child = self
            .server(index, self.client_ports[index], &log_name)
            .spawn()
            .expect("starting the kv example");
        self.children[index] = Some(child);
    }

    /// `SIGKILL`: no chance to flush or say goodbye.
    fn kill(&mut self, index: usize) {
        let mut child = self.children[index].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Panics if a node process exited (it failed to start, or crashed).
    fn check_running(&mut self) {
        for (index, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("node {} exited: {status}", index + 1);
                }
            }
        }
    }

    fn wait_until_serving(&mut self, index: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.check_running();
            if let Ok(Reply::Simple(pong)) = query(self.client_ports[index], &[b"PING"]) {
                assert_eq!(pong, "PONG");
                return;
            }
            assert!(Instant::now() < deadline, "node {} never served", index + 1);
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the node whose INFO says it leads, once exactly one does.
    fn wait_for_leader(&mut self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.check_running();
            let mut roles = Vec::new();
            for index in 0..self.children.len() {
                if self.children[index].is_none() {
                    roles.push((index, "down".to_string()));
                    continue;
                }
                let role = Client::connect(self.client_ports[index], Duration::from_secs(5))
                    .and_then(|mut client| client.command(&[b"INFO"]))
                    .map_or_else(
                        |error| format!("no answer: {error}"),
                        |reply| match reply {
                            Reply::Bulk(Some(_)) => fields(&reply)["role"].clone(),
                            other => format!("{other:?}"),
                        },
                    );
                roles.push((index, role));
            }
            let leaders: Vec<usize> = roles
                .iter()
                .filter(|(_, role)| role == "leader")
                .map(|(index, _)| *index)
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no single leader within {PATIENCE:?}; roles by node index: {roles:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn print_logs(&self) {
        let Ok(listing) = std::fs::read_dir(self.root.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = listing
            .filter_map(|item| item.ok().map(|item| item.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            eprintln!("--- {} (last 30 lines)", log.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The load.

#[derive(Default)]
struct WriterReport {
    /// Writes answered `+OK`, in the order they were acknowledged.
    acknowledged: Vec<(String, String)>,
    /// Error replies (no leader yet, ...) and broken connections, each retried.
    failures: usize,
}

/// Writes unique keys, each with its own value, until `stop`; a write that fails is retried
/// (on another node if the connection broke) and counted only once acknowledged.
fn writer(
    number: usize,
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    latest: Arc<Mutex<Option<(String, String)>>>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut node = number % ports.len();
    let mut client: Option<Client> = None;
    let mut sequence = 0;
    'writes: while !stop.load(Ordering::Relaxed) {
        let key = format!("w{number}-k{sequence}");
        let value = format!("w{number}-v{sequence}");
        sequence += 1;
        loop {
            if stop.load(Ordering::Relaxed) {
                break 'writes;
            }
            if client.is_none() {
                match Client::connect(ports[node], Duration::from_secs(15)) {
                    Ok(connected) => client = Some(connected),
                    Err(_) => {
                        report.failures += 1;
                        node = (node + 1) % ports.len();
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
            }
            let connection = client.as_mut().expect("connected");
            match connection.command(&[b"SET", key.as_bytes(), value.as_bytes()]) {
                Ok(Reply::Simple(ok)) if ok == "OK" => {
                    *latest.lock().unwrap() = Some((key.clone(), value.clone()));
                    report.acknowledged.push((key, value));
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    continue 'writes;
                }
                Ok(Reply::Error(_)) => {
                    report.failures += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(other) => panic!("SET answered {other:?}"),
                Err(_) => {
                    // The node died (or the connection broke): try the next one.
                    report.failures += 1;
                    client = None;
                    node = (node + 1) % ports.len();
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    report
}

/// Until `stop`, reads the latest acknowledged write at one node after another (leader or
/// not: read-index at the leader or through it, the log if that fails): a write
/// acknowledged before the GET was sent
/// must be seen (keys are never overwritten). Returns how many reads were checked.
fn reader(
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    latest: Arc<Mutex<Option<(String, String)>>>,
) -> usize {
    let mut checked = 0;
    let mut node = 0;
    while !stop.load(Ordering::Relaxed) {
        node = (node + 1) % ports.len();
        let Some((key, value)) = latest.lock().unwrap().clone() else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        match query(ports[node], &[b"GET", key.as_bytes()]) {
            Ok(Reply::Bulk(read)) => {
                assert_eq!(
                    read,
                    Some(value.clone().into_bytes()),
                    "node {}: GET {key} missed the acknowledged {value}",
                    node + 1
                );
                checked += 1;
            }
            // An election, or a killed node: the outcome is unknown, not wrong.
            Ok(Reply::Error(_)) | Err(_) => thread::sleep(Duration::from_millis(20)),
            Ok(other) => panic!("GET answered {other:?}"),
        }
    }
    checked
}

fn wait_for_count(counter: &AtomicUsize, at_least: usize, cluster: &mut Cluster) {
    let deadline = Instant::now() + PATIENCE;
    while counter.load(Ordering::Relaxed) < at_least {
        cluster.check_running();
        assert!(
            Instant::now() < deadline,
            "only {} writes acknowledged, waiting for {at_least}",
            counter.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// The scenario.

#[test]
fn acknowledged_writes_survive_a_sigkilled_leader_on_every_replica_in_one_order() {
    server_binary(); // built before the clock of the scenario starts
    let scenario_started = Instant::now();
    let mut cluster = Cluster::new();
    for index in 0..NODES {
        cluster.start(index);
    }
    for index in 0..NODES {
        cluster.wait_until_serving(index);
    }
    let first_leader = cluster.wait_for_leader();

    // A second process on a directory in use is refused: the storage lock.
    let intruder_port = free_ports(1)[0];
    let intruder = cluster
        .server(0, intruder_port, "intruder.log")
        .status()
        .expect("running the intruder");
    assert!(!intruder.success(), "a second process opened node 1's data");
    let intruder_log =
        std::fs::read_to_string(cluster.root.path().join("intruder.log")).unwrap_or_default();
    assert!(
        intruder_log.contains("locked by another process"),
        "{intruder_log}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let latest = Arc::new(Mutex::new(None));
    let writers: Vec<_> = (0..WRITERS)
        .map(|number| {
            let ports = cluster.client_ports.clone();
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            let latest = latest.clone();
            thread::spawn(move || writer(number, ports, stop, acknowledged, latest))
        })
        .collect();
    let reader = {
        let (ports, stop, latest) = (cluster.client_ports.clone(), stop.clone(), latest.clone());
        thread::spawn(move || reader(ports, stop, latest))
    };
    // Stops the writers also when an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_writers = StopOnDrop(stop.clone());

    wait_for_count(&acknowledged, 300, &mut cluster);
    thread::sleep(Duration::from_millis(500));
    let leader = cluster.wait_for_leader();
    let before_kill = acknowledged.load(Ordering::Relaxed);
    cluster.kill(leader);
    let killed_at = Instant::now();
    eprintln!(
        "killed the leader, node {} (first leader: node {}), after {before_kill} acknowledged writes",
        leader + 1,
        first_leader + 1
    );

    // The survivors elect a leader and go on acknowledging writes.
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    wait_for_count(&acknowledged, before_kill + 300, &mut cluster);
    let failover = killed_at.elapsed();
    thread::sleep(Duration::from_millis(1000));

    cluster.start(leader);
    cluster.wait_until_serving(leader);
    let at_restart = acknowledged.load(Ordering::Relaxed);
    wait_for_count(&acknowledged, at_restart + 300, &mut cluster);
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<WriterReport> = writers
        .into_iter()
        .map(|writer| writer.join().expect("writer thread"))
        .collect();
    let acknowledged_writes: Vec<(String, String)> = reports
        .iter()
        .flat_map(|report| report.acknowledged.iter().cloned())
        .collect();
    let failures: usize = reports.iter().map(|report| report.failures).sum();
    let reads_checked = reader.join().expect("reader thread");
    assert!(reads_checked > 20, "only {reads_checked} reads checked");
    assert!(acknowledged_writes.len() >= before_kill + 600);

    // Every replica reaches the same slot with the same log and state digests.
    let deadline = Instant::now() + PATIENCE;
    let digests = loop {
        cluster.check_running();
        let digests: Vec<HashMap<String, String>> = cluster
            .client_ports
            .iter()
            .filter_map(|&port| query(port, &[b"SYNOD.DIGEST"]).ok())
            .map(|reply| fields(&reply))
            .collect();
        if digests.len() == NODES && digests.iter().all(|digest| digest == &digests[0]) {
            break digests;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge: {digests:#?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let applied_slot: u64 = digests[0]["applied_slot"].parse().unwrap();
    assert!(applied_slot as usize >= acknowledged_writes.len());
    // The restarted node restored its own snapshot, then installed a peer's: the survivors
    // had compacted past what it held.
    let restarted_log = std::fs::read_to_string(
        cluster
            .root
            .path()
            .join(format!("node-{}.2.log", leader + 1)),
    )
    .unwrap_or_default();
    assert!(
        restarted_log.contains("installed a peer's snapshot"),
        "the restarted node was not sent a snapshot:\n{restarted_log}"
    );

    // Every acknowledged write is in every replica's copy (pipelined local reads, which are
    // exact now that the replicas have converged)...
    for (index, &port) in cluster.client_ports.iter().enumerate() {
        let mut client = Client::connect(port, Duration::from_secs(15)).unwrap();
        for chunk in acknowledged_writes.chunks(256) {
            for (key, _) in chunk {
                client.send(&[b"SYNOD.LOCALGET", key.as_bytes()]).unwrap();
            }
            for (key, value) in chunk {
                let reply = client.read_reply().unwrap();
                assert_eq!(
                    reply,
                    Reply::Bulk(Some(value.clone().into_bytes())),
                    "node {}: acknowledged write {key} = {value} is missing",
                    index + 1
                );
            }
        }
        // ... and linearizable reads (read-index, at the leader and through it) see them
        // too.
        for (key, value) in acknowledged_writes.iter().step_by(97) {
            let reply = query(port, &[b"GET", key.as_bytes()]).unwrap();
            assert_eq!(reply, Reply::Bulk(Some(value.clone().into_bytes())));
        }
    }

    let leader_now = cluster.wait_for_leader();
    let info = fields(&query(cluster.client_ports[leader_now], &[b"INFO"]).unwrap());
    eprintln!(
        "{} writes acknowledged ({before_kill} before the kill), {failures} failed attempts retried; \
         failover to node {} took {:.1} s; {applied_slot} slots applied on every replica; \
         leader node {}: {} commands applied per fsync, {} ready batches per storage write; \
         scenario {:.1} s",
        acknowledged_writes.len(),
        new_leader + 1,
        failover.as_secs_f64(),
        leader_now + 1,
        info["commands_applied_per_sync"],
        info["driver_batches_per_storage_write"],
        scenario_started.elapsed().as_secs_f64()
    );
    let reads_confirmed: u64 = info["driver_reads_confirmed"].parse().unwrap();
    assert!(reads_confirmed > 0, "no read went by read-index: {info:?}");
    let follower_reads_confirmed: u64 = (0..NODES)
        .filter(|&index| index != leader_now)
        .map(|index| {
            let info = fields(&query(cluster.client_ports[index], &[b"INFO"]).unwrap());
            info["driver_reads_confirmed"].parse::<u64>().unwrap()
        })
        .sum();
    assert!(
        follower_reads_confirmed > 0,
        "no follower read went by read-index"
    );
    eprintln!(
        "{reads_checked} reads of the latest acknowledged write checked during the run; \
         read-index reads: {reads_confirmed} at the leader, {follower_reads_confirmed} at the followers"
    );
    let syncs: u64 = info["storage_syncs"].parse().unwrap();
    assert!(syncs > 0, "the leader never synced: {info:?}");
}

/// Sends `signal` (`STOP`, `CONT`) to a node process, with the shell's built-in `kill` (a
/// `kill` binary is not on every machine).
fn signal(child: &Child, signal: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {}", child.id()))
        .status()
        .expect("running sh");
    assert!(status.success(), "kill -{signal} failed");
}

/// `args` at `port` until it answers something other than an error.
fn until_answered(port: u16, args: &[&[u8]]) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Client::connect(port, Duration::from_secs(2)).and_then(|mut c| c.command(args)) {
            Ok(Reply::Error(_)) | Err(_) => {}
            Ok(reply) => return reply,
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} at port {port}: no answer"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Leader leases against a stalled process: the leader is stopped (`SIGSTOP`) while it holds
/// a lease, the others elect a new leader and acknowledge a write, and a GET waits in the
/// stopped leader's socket. When it resumes, its clock must catch up before it answers (the
/// tick stream bursts the missed ticks and the driver takes ticks first), so the lease has
/// run out and the read cannot return the overwritten value.
#[test]
fn a_leader_stopped_past_its_lease_serves_no_stale_read_when_it_resumes() {
    let mut cluster = Cluster::with_options(&["--lease-ticks", "20"]);
    for index in 0..NODES {
        cluster.start(index);
    }
    for index in 0..NODES {
        cluster.wait_until_serving(index);
    }
    let leader = cluster.wait_for_leader();
    let port = cluster.client_ports[leader];
    assert_eq!(
        until_answered(port, &[b"SET", b"k", b"old"]),
        Reply::Simple("OK".into())
    );
    // Reads at the leader go by its lease once a heartbeat round has been echoed.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = until_answered(port, &[b"GET", b"k"]);
        assert_eq!(reply, Reply::Bulk(Some(b"old".to_vec())));
        let info = fields(&query(port, &[b"INFO"]).unwrap());
        if info["lease_reads"].parse::<u64>().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no read went by the lease");
        thread::sleep(Duration::from_millis(20));
    }
    signal(cluster.children[leader].as_ref().unwrap(), "STOP");
    let others: Vec<usize> = (0..NODES).filter(|&index| index != leader).collect();
    let deadline = Instant::now() + PATIENCE;
    let new_leader = loop {
        let leading = others.iter().copied().find(|&index| {
            query(cluster.client_ports[index], &[b"INFO"])
                .is_ok_and(|reply| fields(&reply)["role"] == "leader")
        });
        if let Some(index) = leading {
            break index;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while n{} is stopped",
            leader + 1
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        until_answered(cluster.client_ports[new_leader], &[b"SET", b"k", b"new"]),
        Reply::Simple("OK".into())
    );
    // A read waits in the stopped leader's socket; then it resumes.
    let mut client = Client::connect(port, Duration::from_secs(30)).unwrap();
    client.send(&[b"GET", b"k"]).unwrap();
    thread::sleep(Duration::from_millis(100));
    signal(cluster.children[leader].as_ref().unwrap(), "CONT");
    let reply = client.read_reply().unwrap();
    assert_ne!(
        reply,
        Reply::Bulk(Some(b"old".to_vec())),
        "the resumed leader served a stale read under a lease that had run out"
    );
    eprintln!("the resumed old leader answered {reply:?}");
}

/// Membership change across processes: n1..n3 start knowing only each other; n4 starts with
/// `--join`, the others learn its address (`SYNOD.SETPEER`, while they run), and it is added
/// as a learner (`SYNOD.SETMEMBERS`), catches up, is promoted while n1 is removed in the next
/// change; n1 is then killed for good and forgotten (`SYNOD.DELPEER`), and the cluster
/// {2, 3, 4} serves reads and writes, also after n4 restarts (its membership is in its
/// storage, not in its flags).
#[test]
fn a_node_is_added_and_another_removed_through_resp() {
    let mut cluster = Cluster::of(4, &["--members", "1,2,3"]);
    cluster.node_options[3] = vec!["--join".to_string()];
    let first_three = peers_argument(&cluster.peer_ports[..3]);
    for index in 0..3 {
        cluster.node_peers[index] = Some(first_three.clone());
    }
    for index in 0..3 {
        cluster.start(index);
    }
    for index in 0..3 {
        cluster.wait_until_serving(index);
    }
    let ports = cluster.client_ports.clone();
    for key in 0..20 {
        let key = format!("before-{key}");
        let reply = until_answered(ports[key.len() % 3], &[b"SET", key.as_bytes(), b"v"]);
        assert_eq!(reply, Reply::Simple("OK".into()));
    }
    cluster.start(3);
    cluster.wait_until_serving(3);
    assert_eq!(
        until_answered(ports[3], &[b"SYNOD.MEMBERS"]),
        Reply::Bulk(Some(b"none".to_vec())),
        "a joining node knows no membership"
    );
    let n4 = format!("127.0.0.1:{}", cluster.peer_ports[3]);
    for port in &ports[..3] {
        assert_eq!(
            until_answered(*port, &[b"SYNOD.SETPEER", b"4", n4.as_bytes()]),
            Reply::Simple("OK".into())
        );
        let listed = text(&until_answered(*port, &[b"SYNOD.PEERS"]));
        assert!(listed.contains(&format!("4={n4}")), "{listed}");
    }
    // `SYNOD.SETMEMBERS` at the leader, retried while a leader is being elected.
    let change = |cluster: &mut Cluster, voters: &str, learners: &str| loop {
        let leader = cluster.wait_for_leader();
        let reply = query(
            ports[leader],
            &[b"SYNOD.SETMEMBERS", voters.as_bytes(), learners.as_bytes()],
        );
        if let Ok(Reply::Integer(slot)) = reply {
            assert!(slot > 0);
            return;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let members_at = |port: u16, expected: &str| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Reply::Bulk(Some(text))) = query(port, &[b"SYNOD.MEMBERS"]) {
                if text == expected.as_bytes() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "port {port} never showed {expected}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    change(&mut cluster, "1,2,3", "4");
    members_at(ports[3], "voters 1,2,3 learners 4");
    // The learner caught up: it holds the writes made before it was added.
    let deadline = Instant::now() + PATIENCE;
    while query(ports[3], &[b"SYNOD.LOCALGET", b"before-19"]).ok()
        != Some(Reply::Bulk(Some(b"v".to_vec())))
    {
        assert!(Instant::now() < deadline, "n4 never caught up");
        thread::sleep(Duration::from_millis(50));
    }
    change(&mut cluster, "2,3,4", "");
    for port in &ports[1..4] {
        members_at(*port, "voters 2,3,4 learners ");
    }
    cluster.kill(0);
    for port in &ports[1..4] {
        assert_eq!(
            until_answered(*port, &[b"SYNOD.DELPEER", b"1"]),
            Reply::Integer(1)
        );
    }
    let reply = until_answered(ports[3], &[b"SET", b"after", b"w"]);
    assert_eq!(reply, Reply::Simple("OK".into()));
    assert_eq!(
        until_answered(ports[1], &[b"GET", b"after"]),
        Reply::Bulk(Some(b"w".to_vec()))
    );
    cluster.kill(3);
    cluster.start(3);
    cluster.wait_until_serving(3);
    members_at(ports[3], "voters 2,3,4 learners ");
    assert_eq!(
        until_answered(ports[3], &[b"GET", b"before-7"]),
        Reply::Bulk(Some(b"v".to_vec()))
    );
}
