//! synod side by side with raft-rs and OmniPaxos, under one harness.
//!
//! ```text
//! cargo run --release                 # the whole table (every case, 5 alternating runs each)
//! cargo run --release -- plot         # commits/s vs in-flight window -> peers.svg
//! cargo run --release -- one synod 3 1000 64 200000   # one run, in this process
//! ```
//!
//! `table` and `plot` run every measurement in a child process (`one`), so that each one's
//! peak RSS is its own. See README.md for what is measured and how each library is tuned.

mod alloc;
mod harness;
mod omni_cluster;
mod plot;
mod raft_cluster;
mod synod_cluster;

use harness::{drive, Measured};
use std::process::Command;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// The libraries, in table order; synod first, the peers after it.
const LIBRARIES: [&str; 3] = ["synod", "raft-rs", "omnipaxos"];

/// One benchmark case.
#[derive(Clone, Copy, Debug)]
struct Case {
    nodes: usize,
    window: u64,
    payload: usize,
    /// Commands committed in the timed section.
    count: u64,
    /// Compact every replica's log each time this many more commands were applied everywhere
    /// (0: never, the logs grow for the whole run).
    compact_every: u64,
}

impl Case {
    /// How the case is named in tables.
    fn label(&self) -> String {
        let log = match self.compact_every {
            0 => ", log never compacted".to_owned(),
            COMPACT_EVERY => String::new(),
            every => format!(", compacted every {every} commands"),
        };
        format!(
            "{} replicas, B={}, {} B{log}",
            self.nodes, self.window, self.payload
        )
    }
}

/// Every case but one compacts the logs every this many commands, as a long-running deployment
/// does once its state machines have snapshotted: the logs stay bounded, as in production.
const COMPACT_EVERY: u64 = 10_000;

const CASES: [Case; 6] = [
    Case {
        nodes: 3,
        window: 1000,
        payload: 64,
        count: 200_000,
        compact_every: COMPACT_EVERY,
    },
    // 200 000, not fewer: a run of this case is short (a quarter of a second for synod), and
    // shorter ones were at the mercy of this shared machine's slow phases.
    Case {
        nodes: 3,
        window: 1,
        payload: 64,
        count: 200_000,
        compact_every: COMPACT_EVERY,
    },
    Case {
        nodes: 5,
        window: 1000,
        payload: 64,
        count: 200_000,
        compact_every: COMPACT_EVERY,
    },
    Case {
        nodes: 3,
        window: 1000,
        payload: 1024,
        count: 100_000,
        compact_every: COMPACT_EVERY,
    },
    Case {
        nodes: 3,
        window: 1000,
        payload: 64,
        count: 200_000,
        compact_every: 0,
    },
    // The 1 KiB case compacted by bytes rather than by count: 625 commands of 1 KiB are the
    // 640 KiB that 10 000 commands of 64 B take. Holding 10 000 one-KiB commands (10 MiB, more
    // than this machine's L2 cache) costs every library alike and caps the ratio at 1 KiB.
    Case {
        nodes: 3,
        window: 1000,
        payload: 1024,
        count: 100_000,
        compact_every: 625,
    },
];

/// What one child run reports.
#[derive(Clone, Copy, Debug, Default)]
struct Report {
    commits_per_second: f64,
    commits_per_cpu_second: f64,
    messages_per_commit: f64,
    allocations_per_commit: f64,
    allocated_bytes_per_commit: f64,
    peak_rss_kib: f64,
    stall_ticks: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("table");
    match command {
        "table" => table(parse_flag(&args, "--runs").unwrap_or(5)),
        "plot" => {
            let out = flag_value(&args, "--out").unwrap_or_else(|| "peers.svg".to_owned());
            plot::sweep(&out, parse_flag(&args, "--runs").unwrap_or(3));
        }
        "one" => one(&args[1..]),
        "help" | "--help" | "-h" => print!("{}", USAGE),
        other => {
            eprint!("unknown command {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

const USAGE: &str = "\
usage:
  synod-peers [table] [--runs N]          every case, N alternating runs each, Markdown table
  synod-peers plot [--out FILE] [--runs N] commits/s vs in-flight window, SVG
  synod-peers one LIB NODES WINDOW PAYLOAD COUNT [KNOB=VALUE ...]
                                          one run in this process; LIB is synod, raft-rs or
                                          omnipaxos (or null: the harness alone, no consensus);
                                          knobs override the tuning (see README.md);
                                          compact_every=K (any LIB) compacts the logs every K
                                          commands (default 0: never)
";

fn flag_value(args: &[String], name: &str) -> Option<String> {
    let at = args.iter().position(|arg| arg == name)?;
    Some(
        args.get(at + 1)
            .unwrap_or_else(|| panic!("{name} needs a value"))
            .clone(),
    )
}

fn parse_flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    flag_value(args, name).map(|value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("bad value {value:?} for {name}"))
    })
}

/// `one LIB NODES WINDOW PAYLOAD COUNT [KNOB=VALUE ...]`: runs one measurement here and prints
/// it as one `RESULT key=value ...` line.
fn one(args: &[String]) {
    fix_heap_trimming();
    let [library, nodes, window, payload, count, knobs @ ..] = args else {
        eprint!("{USAGE}");
        std::process::exit(2);
    };
    let number = |text: &str| -> u64 {
        text.parse()
            .unwrap_or_else(|_| panic!("bad number {text:?}"))
    };
    let mut case = Case {
        nodes: number(nodes) as usize,
        window: number(window),
        payload: number(payload) as usize,
        count: number(count),
        compact_every: 0,
    };
    let mut knobs: Vec<(String, u64)> = knobs
        .iter()
        .map(|knob| {
            let (name, value) = knob
                .split_once('=')
                .unwrap_or_else(|| panic!("knob {knob:?} is not NAME=VALUE"));
            (name.to_owned(), number(value))
        })
        .collect();
    let mut knob = |name: &str, default: u64| -> u64 {
        match knobs.iter().position(|(known, _)| known == name) {
            Some(at) => knobs.remove(at).1,
            None => default,
        }
    };
    case.compact_every = knob("compact_every", 0);
    let load = harness::Load {
        warmup: (case.count / 10).max(case.window.min(1000)),
        count: case.count,
        window: case.window,
        size: case.payload,
        compact_every: case.compact_every,
    };
    let measured = match library.as_str() {
        "synod" => {
            let defaults = synod_cluster::Tuning::default();
            let tuning = synod_cluster::Tuning {
                inflight_msgs_max: knob("inflight_msgs_max", defaults.inflight_msgs_max as u64)
                    as usize,
                accept_bytes_max: knob("accept_bytes_max", defaults.accept_bytes_max as u64)
                    as usize,
            };
            let cluster =
                synod_cluster::SynodCluster::new(case.nodes, case.window, case.payload, tuning);
            run(cluster, load)
        }
        "raft-rs" => {
            let defaults = raft_cluster::Tuning::default();
            let tuning = raft_cluster::Tuning {
                max_inflight_msgs: knob("max_inflight_msgs", defaults.max_inflight_msgs as u64)
                    as usize,
                max_size_per_msg: knob("max_size_per_msg", defaults.max_size_per_msg),
                batch_append: knob("batch_append", defaults.batch_append as u64) != 0,
            };
            let cluster = raft_cluster::RaftCluster::new(case.nodes, tuning);
            run(cluster, load)
        }
        "omnipaxos" => {
            let defaults = omni_cluster::Tuning::for_window(case.window);
            let tuning = omni_cluster::Tuning {
                batch_size: knob("batch_size", defaults.batch_size as u64) as usize,
                flush_batch_tick_timeout: knob(
                    "flush_batch_tick_timeout",
                    defaults.flush_batch_tick_timeout,
                ),
                buffer_size: knob("buffer_size", defaults.buffer_size as u64) as usize,
            };
            let cluster = omni_cluster::OmniCluster::new(case.nodes, tuning);
            run(cluster, load)
        }
        "synod-file" => {
            // FileStorage in fresh directories, fsync on every write that asks for it (every
            // write that carries a promise or an acceptance), in this one thread.
            let root = std::env::temp_dir().join(format!("synod-peers-{}", std::process::id()));
            let storages: Vec<synod::FileStorage> = (1..=case.nodes as u64)
                .map(|node| {
                    synod::FileStorage::open(
                        root.join(format!("node-{node}")),
                        1,
                        synod::NodeId(node),
                        synod::FileStorageOptions::default(),
                    )
                    .expect("open FileStorage")
                })
                .collect();
            let mut cluster = synod_cluster::SynodCluster::with_storages(
                storages,
                case.window,
                case.payload,
                synod_cluster::Tuning::default(),
            );
            let before: Vec<u64> = cluster.storages().iter().map(|s| s.sync_count()).collect();
            let measured = drive(&mut cluster, load);
            let syncs: Vec<u64> = cluster
                .storages()
                .iter()
                .zip(&before)
                .map(|(storage, before)| storage.sync_count() - before)
                .collect();
            println!(
                "FILE fsyncs_per_replica={syncs:?} proposals_per_leader_fsync={:.1} (warm-up and timed run; \
                 the leader is node 1)",
                (load.warmup + load.count) as f64 / syncs[0].max(1) as f64
            );
            drop(cluster);
            let _ = std::fs::remove_dir_all(&root);
            measured
        }
        "null" => run(harness::NullCluster::new(case.nodes, false), load),
        "null-retain" => run(harness::NullCluster::new(case.nodes, true), load),
        other => panic!("unknown library {other:?}: synod, raft-rs, omnipaxos (or null)"),
    };
    if let Some((name, _)) = knobs.first() {
        panic!("knob {name:?} does not apply to {library}");
    }
    let report = report(&measured);
    println!(
        "RESULT commits_per_second={:.0} commits_per_cpu_second={:.0} messages_per_commit={:.4} allocations_per_commit={:.3} \
         allocated_bytes_per_commit={:.1} peak_rss_kib={:.0} stall_ticks={:.0} elapsed_ms={:.1}",
        report.commits_per_second,
        report.commits_per_cpu_second,
        report.messages_per_commit,
        report.allocations_per_commit,
        report.allocated_bytes_per_commit,
        report.peak_rss_kib,
        report.stall_ticks,
        measured.elapsed.as_secs_f64() * 1e3,
    );
}

/// Pins glibc's heap trimming for every library alike. By default glibc returns the top of
/// the heap to the kernel once more than `M_TRIM_THRESHOLD` (128 KiB) of it is free, and raises
/// that threshold by itself the first time a large `mmap`ed block is freed: whether a
/// library's freed log memory goes back to the kernel (to be faulted in again, page by page,
/// by the next allocations) then depends on incidental allocation history. Seen here: with
/// 1 KiB commands and compaction, one library took 5x the page faults of another and lost 20%
/// of its throughput to them, for no reason of its own. A fixed threshold (what a server gets
/// by choosing its allocator) makes the runs comparable.
fn fix_heap_trimming() {
    // SAFETY: `mallopt` only sets an allocator parameter; it is called before this process
    // allocates anything that matters, with a valid parameter and value.
    let status = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20) };
    assert_eq!(status, 1, "mallopt(M_TRIM_THRESHOLD) failed");
}

/// Leaks the cluster: tearing down millions of log entries would only slow the run down (and
/// show up in profiles); the process exits right after.
fn run<C: harness::Cluster>(mut cluster: C, load: harness::Load) -> Measured {
    let measured = drive(&mut cluster, load);
    std::mem::forget(cluster);
    measured
}

fn report(measured: &Measured) -> Report {
    let commits = measured.commits as f64;
    Report {
        commits_per_second: measured.commits_per_second(),
        commits_per_cpu_second: measured.commits_per_cpu_second(),
        messages_per_commit: measured.messages as f64 / commits,
        allocations_per_commit: measured.allocations.calls as f64 / commits,
        allocated_bytes_per_commit: measured.allocations.bytes as f64 / commits,
        peak_rss_kib: peak_rss_kib(),
        stall_ticks: measured.stall_ticks as f64,
    }
}

/// The process's peak resident set size (VmHWM), in KiB.
fn peak_rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Runs `one` in a child process and parses its report.
fn run_child(library: &str, case: Case, knobs: &[String]) -> Report {
    let exe = std::env::current_exe().expect("current executable");
    let output = Command::new(exe)
        .arg("one")
        .arg(library)
        .args([
            case.nodes.to_string(),
            case.window.to_string(),
            case.payload.to_string(),
            case.count.to_string(),
        ])
        .arg(format!("compact_every={}", case.compact_every))
        .args(knobs)
        .output()
        .expect("spawn child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "{library} {case:?} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("{library} {case:?} printed no RESULT:\n{stdout}"));
    let mut report = Report::default();
    for pair in line.split_whitespace() {
        let (key, value) = pair.split_once('=').expect("key=value");
        let value: f64 = value.parse().expect("number");
        match key {
            "commits_per_second" => report.commits_per_second = value,
            "commits_per_cpu_second" => report.commits_per_cpu_second = value,
            "messages_per_commit" => report.messages_per_commit = value,
            "allocations_per_commit" => report.allocations_per_commit = value,
            "allocated_bytes_per_commit" => report.allocated_bytes_per_commit = value,
            "peak_rss_kib" => report.peak_rss_kib = value,
            "stall_ticks" => report.stall_ticks = value,
            _ => {}
        }
    }
    report
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The median of each field over `reports`, field by field.
fn median_report(reports: &[Report]) -> Report {
    let field = |get: fn(&Report) -> f64| median(reports.iter().map(get).collect());
    Report {
        commits_per_second: field(|r| r.commits_per_second),
        commits_per_cpu_second: field(|r| r.commits_per_cpu_second),
        messages_per_commit: field(|r| r.messages_per_commit),
        allocations_per_commit: field(|r| r.allocations_per_commit),
        allocated_bytes_per_commit: field(|r| r.allocated_bytes_per_commit),
        peak_rss_kib: field(|r| r.peak_rss_kib),
        stall_ticks: field(|r| r.stall_ticks),
    }
}

/// Runs every case `runs` times, the libraries alternating within each run (and the harness
/// alone, `null`, with them), and prints the medians as a Markdown table.
///
/// Besides each library's commits per CPU-second the table gives its own cost: nanoseconds of
/// CPU per committed entry beyond what the harness alone spends (building the command, the
/// client loop, every replica's digest). The `null` row is that floor; its throughput over the
/// faster peer's is the best ratio any library could reach on the case. The `null-retain` row
/// also keeps every command (once) until the next compaction, as any replicated log must: its
/// ratio is the ceiling for a library that holds its log in memory, and its "own ns/entry" is
/// what holding the commands costs by itself.
fn table(runs: usize) {
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    for case in CASES {
        let mut reports: Vec<Vec<Report>> = vec![Vec::new(); LIBRARIES.len()];
        let mut floor = Vec::new();
        let mut retained_floor = Vec::new();
        for run in 0..runs {
            for (index, library) in LIBRARIES.iter().enumerate() {
                let report = run_child(library, case, &[]);
                eprintln!(
                    "{}, run {}/{runs}: {library:>9} {:>10.0} commits/CPU-s {:>10.0} commits/s",
                    case.label(),
                    run + 1,
                    report.commits_per_cpu_second,
                    report.commits_per_second
                );
                reports[index].push(report);
            }
            floor.push(run_child("null", case, &[]));
            retained_floor.push(run_child("null-retain", case, &[]));
        }
        summaries.push(Summary::of(case, &reports, &retained_floor));
        rows.push((
            case,
            reports.iter().map(|r| median_report(r)).collect::<Vec<_>>(),
            median_report(&floor),
            median_report(&retained_floor),
        ));
    }
    println!(
        "| case | library | commits/CPU-s | synod/peer | own ns/entry | commits/s (wall) | \
         msgs/commit | allocs/commit | alloc bytes/commit | peak RSS (MiB) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let nanos = |report: &Report| 1e9 / report.commits_per_cpu_second;
    for (case, medians, floor, retained_floor) in &rows {
        let synod = medians[0];
        for (library, report) in LIBRARIES.iter().zip(medians) {
            let ratio = if *library == "synod" {
                "—".to_owned()
            } else {
                format!(
                    "{:.2}×",
                    synod.commits_per_cpu_second / report.commits_per_cpu_second
                )
            };
            let stalls = if report.stall_ticks > 0.0 {
                format!(" ({:.0} stall ticks)", report.stall_ticks)
            } else {
                String::new()
            };
            println!(
                "| {} | {library}{stalls} | {:.0} | {ratio} | {:.0} | {:.0} | {:.3} | {:.2} | {:.0} | {:.1} |",
                case.label(),
                report.commits_per_cpu_second,
                nanos(report) - nanos(floor),
                report.commits_per_second,
                report.messages_per_commit,
                report.allocations_per_commit,
                report.allocated_bytes_per_commit,
                report.peak_rss_kib / 1024.0,
            );
        }
        let fastest_peer = medians[1..]
            .iter()
            .map(|report| report.commits_per_cpu_second)
            .fold(0.0, f64::max);
        println!(
            "| {} | harness alone (ceiling {:.1}× the faster peer) | {:.0} | | 0 | {:.0} | | | | {:.1} |",
            case.label(),
            floor.commits_per_cpu_second / fastest_peer,
            floor.commits_per_cpu_second,
            floor.commits_per_second,
            floor.peak_rss_kib / 1024.0,
        );
        if case.compact_every > 0 {
            println!(
                "| {} | harness keeping each command until compaction (ceiling {:.1}×) | {:.0} | | {:.0} | {:.0} | | | | {:.1} |",
                case.label(),
                retained_floor.commits_per_cpu_second / fastest_peer,
                retained_floor.commits_per_cpu_second,
                nanos(retained_floor) - nanos(floor),
                retained_floor.commits_per_second,
                retained_floor.peak_rss_kib / 1024.0,
            );
        }
    }
    println!();
    println!(
        "| case | synod/faster peer (medians) | best of {runs} | median of the {runs} paired runs | \
         synod/raft-rs (medians) | ceiling with the log kept (`null-retain`) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for summary in &summaries {
        println!("{summary}");
    }
    eprintln!(
        "({} runs per case, {:?})",
        runs,
        round_secs(started.elapsed())
    );
}

/// One case's ratios of synod to the faster peer, by three estimators. This machine has slow
/// phases lasting seconds, which land on some runs and not others: the ratio of the medians is
/// the headline; the best run of each library estimates the undisturbed cost; the median of
/// the ratios of runs made back to back (one run of each library, alternating) cancels a phase
/// that covers both runs of a pair.
struct Summary {
    label: String,
    /// The faster peer's name, by median.
    peer: &'static str,
    medians: f64,
    best: f64,
    paired: f64,
    versus_raft: f64,
    /// `null-retain` over the faster peer (medians); none if the case never compacts.
    ceiling: Option<f64>,
}

impl Summary {
    fn of(case: Case, reports: &[Vec<Report>], retained_floor: &[Report]) -> Summary {
        let speeds = |index: usize| -> Vec<f64> {
            reports[index]
                .iter()
                .map(|report| report.commits_per_cpu_second)
                .collect()
        };
        let best = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
        let synod = speeds(0);
        let peers: Vec<(usize, f64)> = (1..LIBRARIES.len())
            .map(|index| (index, median(speeds(index))))
            .collect();
        let (peer, peer_median) = peers.iter().copied().fold((1, 0.0), |fastest, candidate| {
            if candidate.1 > fastest.1 {
                candidate
            } else {
                fastest
            }
        });
        let raft = peers
            .iter()
            .find(|(index, _)| LIBRARIES[*index] == "raft-rs")
            .map_or(f64::NAN, |(_, speed)| *speed);
        let paired = median(
            synod
                .iter()
                .zip(speeds(peer))
                .map(|(synod, peer)| synod / peer)
                .collect(),
        );
        let retained = median(
            retained_floor
                .iter()
                .map(|report| report.commits_per_cpu_second)
                .collect(),
        );
        Summary {
            label: case.label(),
            peer: LIBRARIES[peer],
            medians: median(synod.clone()) / peer_median,
            best: best(&synod) / best(&speeds(peer)),
            paired,
            versus_raft: median(synod) / raft,
            ceiling: (case.compact_every > 0).then(|| retained / peer_median),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ceiling = self
            .ceiling
            .map_or("(no compaction)".to_owned(), |ceiling| {
                format!("{ceiling:.1}×")
            });
        let peer = if self.peer == "omnipaxos" {
            String::new()
        } else {
            format!(" (faster peer: {})", self.peer)
        };
        write!(
            out,
            "| {}{peer} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {ceiling} |",
            self.label, self.medians, self.best, self.paired, self.versus_raft
        )
    }
}

fn round_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}
