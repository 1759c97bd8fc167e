//! Seed sweeps of the deterministic simulator.
//!
//! ```text
//! cargo run --release --example sim -- --seeds 10000 --nodes 3
//! cargo run --release --example sim -- --seed 1234 --nodes 5      # replay one seed
//! cargo run --release --example sim -- --seeds 200 --faults loss,crash
//! cargo run --release --example sim -- --seeds 1000 --nodes 3 --spare-nodes 2  # membership changes add them
//! cargo run --release --example sim -- --twopc --seeds 5000           # two-phase commit world
//! cargo run --release --example sim -- --twopc --seed 17 --trace      # replay one, step by step
//! cargo run --release --example sim -- --twopc --seeds 5000 --twopc-remember 2  # forgetting
//! cargo run --release --example sim -- --locks --seeds 5000           # the lock service world
//! cargo run --release --example sim -- --locks --seeds 5000 --shared-percent 0  # exclusive only
//! ```
//!
//! Every seed runs a safety phase with faults on (checkers after every step), then a liveness
//! phase (faults off, everything healed: a new command must commit everywhere within a bound).
//! A failure prints the seed, the violated property, the tail of the run's log and the command
//! that replays exactly that seed.

use clap::Parser;
use std::io::{IsTerminal, Write};
use std::time::Instant;
use synod::sim::{Faults, SimConfig, SimStats, Simulation};

#[derive(Parser, Debug)]
#[command(about = "Run the synod simulator over many seeds")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Replay exactly this one seed (overrides --seeds/--first-seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Replicas per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Spare nodes (ids after the --nodes ones) that membership changes (the "membership"
    /// fault) may add: each is started as a joining node just before the first change that
    /// names it, and from then on faults hit it as any other node.
    #[arg(long, default_value_t = 0)]
    spare_nodes: usize,
    /// Steps of the safety phase.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Step bound of the liveness phase.
    #[arg(long, default_value_t = 4000)]
    liveness_steps: u64,
    /// Faults to inject: "all", "none", or a comma list of
    /// loss,duplicate,delay,crash,partition,disk,pause,clog,skew,corrupt,compaction,transfer,
    /// membership (the leader is asked to change the membership at random; see --spare-nodes),
    /// hold (a ready left undrained for a few steps while messages arrive), ready-crash (a
    /// crash between a ready's messages and its write, or between its write and the messages
    /// that waited for it), snapshot-crash (a crash between saving a snapshot and compacting,
    /// or between an installed snapshot's compaction and the ready's write).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Key-value clients per run (0: opaque commands). With clients, each run ends with a
    /// linearizability check of their history.
    #[arg(long, default_value_t = 0)]
    kv_clients: usize,
    /// Leader leases of this many ticks (`Config::lease_ticks`; 0: off). Paused processes
    /// then keep their clocks, and the lease must leave room for the clock skew: with the
    /// default election timeout (10) and skew (±30 %), at most 5.
    #[arg(long, default_value_t = 0)]
    lease_ticks: u32,
    /// Run every seed twice and require identical trace hashes.
    #[arg(long)]
    check_determinism: bool,
    /// Disks: "mem" (in memory), "file" (every node also on a real FileStorage, so crashes
    /// tear writes at a byte and corruption flips real bytes), or "mixed" (every fourth seed
    /// on files).
    #[arg(long, default_value = "mixed")]
    disk: String,
    /// Run the two-phase-commit world (`synod::sim::twopc`) instead of the replica cluster:
    /// coordinators that crash and take over from the decision log, participants that crash,
    /// a lossy network; checks atomicity, validity and termination. Uses --seeds, --first-seed,
    /// --seed, --steps and --nodes (participants, 1 to 16).
    #[arg(long)]
    twopc: bool,
    /// With --twopc: finished transactions each participant remembers
    /// (`ParticipantConfig::finished_remembered`) and, unless --twopc-log-remember says
    /// otherwise, the decision log too (`DecisionLog::with_finished_max`). Small bounds make
    /// a run forget transactions while late duplicates about them are still in flight.
    /// Default: 4096 and 65 536 (a run forgets nothing).
    #[arg(long)]
    twopc_remember: Option<usize>,
    /// With --twopc: finished transactions the decision log remembers (default: as
    /// --twopc-remember, else 65 536).
    #[arg(long)]
    twopc_log_remember: Option<usize>,
    /// Run the lock service world (`synod::sim::locks`) instead: clients on clocks of their
    /// own that stall, leaders that fail, lost messages; checks exclusion and fencing. Uses
    /// --seeds, --first-seed, --seed, --steps and --nodes (clients).
    #[arg(long)]
    locks: bool,
    /// With --locks: the slowest client clock, as a fraction of the leader's (below 0.9, the
    /// client's margin, exclusion is expected to break: the checker shows it).
    #[arg(long, default_value_t = 0.92)]
    clock_rate_min: f64,
    /// With --locks: the percentage of acquires that ask for a shared lock (the others ask
    /// for an exclusive one), 0 to 100.
    #[arg(long, default_value_t = 50)]
    shared_percent: u32,
    /// With --twopc or --locks: print every step.
    #[arg(long)]
    trace: bool,
    /// Where file disks live (default: /dev/shm if it is writable, else the temp directory;
    /// FileStorage syncs often, so a tmpfs is much faster than a real disk).
    #[arg(long)]
    disk_dir: Option<std::path::PathBuf>,
}

impl Args {
    /// The root of the file disks for `seed`, or `None` for memory disks.
    fn file_disks(&self, seed: u64) -> Option<std::path::PathBuf> {
        let on_files = match self.disk.as_str() {
            "file" => true,
            "mixed" => seed % 4 == 3,
            _ => false,
        };
        on_files.then(|| self.disk_dir.clone().unwrap_or_else(std::env::temp_dir))
    }
}

/// `/dev/shm` if a directory can be created there, else `None`.
fn writable_shm() -> Option<std::path::PathBuf> {
    let probe =
        std::path::Path::new("/dev/shm").join(format!("synod-sim-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some("/dev/shm".into())
}

fn faults(spec: &str) -> Result<Faults, String> {
    if spec == "all" {
        return Ok(Faults::all());
    }
    let all = Faults::all();
    let mut faults = Faults::none();
    if spec == "none" {
        return Ok(faults);
    }
    for name in spec.split(',') {
        match name.trim() {
            "loss" => faults.loss = all.loss,
            "duplicate" => faults.duplicate = all.duplicate,
            "delay" => faults.delay_ticks_max = all.delay_ticks_max,
            "crash" => {
                faults.crash = all.crash;
                faults.restart = all.restart;
            }
            "partition" => {
                faults.partition = all.partition;
                faults.heal = all.heal;
            }
            "disk" => {
                faults.write_delay_ticks_max = all.write_delay_ticks_max;
                faults.unsynced_kept = all.unsynced_kept;
                faults.torn_write = all.torn_write;
            }
            "pause" => {
                faults.pause = all.pause;
                faults.pause_ticks_max = all.pause_ticks_max;
            }
            "clog" => {
                faults.clog = all.clog;
                faults.clog_ticks_max = all.clog_ticks_max;
            }
            "skew" => faults.tick_skew = all.tick_skew,
            "corrupt" => faults.corrupt_disk = all.corrupt_disk,
            "compaction" => faults.compaction = all.compaction,
            "transfer" => faults.transfer = all.transfer,
            "membership" => faults.membership = all.membership,
            "hold" => {
                faults.ready_hold = all.ready_hold;
                faults.ready_hold_ticks_max = all.ready_hold_ticks_max;
            }
            "ready-crash" => faults.crash_in_ready = all.crash_in_ready,
            "snapshot-crash" => faults.crash_in_snapshot = all.crash_in_snapshot,
            other => return Err(format!("unknown fault '{other}'")),
        }
    }
    Ok(faults)
}

/// The simulation of `seed` that the options describe.
fn simulation_config(args: &Args, faults: &Faults, seed: u64) -> SimConfig {
    let mut config = SimConfig::new(args.nodes, seed);
    config.spare_nodes = args.spare_nodes;
    config.faults = faults.clone();
    config.kv_clients = args.kv_clients;
    config.replica.lease_ticks = args.lease_ticks;
    config.file_disks = args.file_disks(seed);
    config
}

fn run_one(
    args: &Args,
    faults: &Faults,
    seed: u64,
) -> (Simulation, Result<(), synod::sim::Violation>) {
    let config = simulation_config(args, faults, seed);
    let mut simulation = Simulation::new(config).expect("main checked the options first");
    let result = simulation
        .run(args.steps)
        .and_then(|()| simulation.check_liveness(args.liveness_steps));
    (simulation, result)
}

fn add(total: &mut SimStats, stats: &SimStats) {
    total.steps += stats.steps;
    total.delivered += stats.delivered;
    total.dropped += stats.dropped;
    total.duplicated += stats.duplicated;
    total.crashes += stats.crashes;
    total.restarts += stats.restarts;
    total.partitions += stats.partitions;
    total.writes_lost += stats.writes_lost;
    total.writes_kept += stats.writes_kept;
    total.writes_torn += stats.writes_torn;
    total.file_recoveries += stats.file_recoveries;
    total.compactions += stats.compactions;
    total.snapshot_restarts += stats.snapshot_restarts;
    total.snapshots_sent += stats.snapshots_sent;
    total.snapshots_installed += stats.snapshots_installed;
    total.pauses += stats.pauses;
    total.clogs += stats.clogs;
    total.corrupt_disks += stats.corrupt_disks;
    total.proposed += stats.proposed;
    total.acknowledged += stats.acknowledged;
    total.elections += stats.elections;
    total.transfers += stats.transfers;
    total.transfers_completed += stats.transfers_completed;
    total.transfers_aborted += stats.transfers_aborted;
    total.kv_operations += stats.kv_operations;
    total.kv_returned += stats.kv_returned;
    total.kv_index_reads += stats.kv_index_reads;
    total.lease_reads += stats.lease_reads;
    total.kv_reads_aborted += stats.kv_reads_aborted;
    total.membership_proposed += stats.membership_proposed;
    total.membership_refused += stats.membership_refused;
    total.membership_skipped += stats.membership_skipped;
    total.membership_chosen += stats.membership_chosen;
    total.members_added += stats.members_added;
    total.members_removed += stats.members_removed;
    total.members_role_changed += stats.members_role_changed;
    total.spares_started += stats.spares_started;
    total.unknown_sender += stats.unknown_sender;
    total.readies_held += stats.readies_held;
    total.crashes_before_write += stats.crashes_before_write;
    total.crashes_after_write += stats.crashes_after_write;
    total.crashes_before_compaction += stats.crashes_before_compaction;
    total.crashes_after_compaction += stats.crashes_after_compaction;
}

/// The 2PC sweep: every seed of the two-phase-commit world; returns the failures.
fn run_twopc(args: &Args, first: u64, count: u64) -> u64 {
    use synod::sim::twopc::{run, TwoPcConfig, TwoPcStats};
    let started = Instant::now();
    let mut total = TwoPcStats::default();
    let mut failures = 0;
    for seed in first..first + count {
        let defaults = TwoPcConfig::new(seed);
        let config = TwoPcConfig {
            participants: args.nodes,
            steps: args.steps,
            trace: args.trace,
            finished_remembered: args.twopc_remember.unwrap_or(defaults.finished_remembered),
            log_finished_max: args
                .twopc_log_remember
                .or(args.twopc_remember)
                .unwrap_or(defaults.log_finished_max),
            ..defaults
        };
        match run(&config) {
            Ok(stats) => {
                total.begun += stats.begun;
                total.committed += stats.committed;
                total.aborted += stats.aborted;
                total.takeovers += stats.takeovers;
                total.participant_crashes += stats.participant_crashes;
                total.crashes_before_write += stats.crashes_before_write;
                total.crashes_after_write += stats.crashes_after_write;
                total.readies_held += stats.readies_held;
                total.messages += stats.messages;
                total.floor_refusals += stats.floor_refusals;
                total.log_floor_aborts += stats.log_floor_aborts;
            }
            Err(violation) => {
                failures += 1;
                let mut replay = format!(
                    "cargo run --release --example sim -- --twopc --seed {seed} --nodes {} --steps {}",
                    args.nodes, args.steps
                );
                if let Some(remember) = args.twopc_remember {
                    replay += &format!(" --twopc-remember {remember}");
                }
                if let Some(remember) = args.twopc_log_remember {
                    replay += &format!(" --twopc-log-remember {remember}");
                }
                eprintln!("{violation}\n  replay: {replay}");
            }
        }
    }
    println!("| seeds | participants | transactions | committed | aborted | coordinator takeovers | participant crashes | of which before a write / after a write | readies held | messages | votes refused at a floor / log aborts at its floor | violations |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} / {} | {failures} |",
        args.nodes,
        total.begun,
        total.committed,
        total.aborted,
        total.takeovers,
        total.participant_crashes,
        total.crashes_before_write,
        total.crashes_after_write,
        total.readies_held,
        total.messages,
        total.floor_refusals,
        total.log_floor_aborts
    );
    println!(
        "{:.1} seeds/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
    failures
}

/// The lock sweep: every seed of the lock world; returns the failures.
fn run_locks(args: &Args, first: u64, count: u64) -> u64 {
    use synod::sim::locks::{run, LocksConfig, LocksStats};
    let started = Instant::now();
    let mut total = LocksStats::default();
    let mut failures = 0;
    for seed in first..first + count {
        let config = LocksConfig {
            clients: args.nodes,
            steps: args.steps,
            clock_rate_min: args.clock_rate_min,
            shared_percent: args.shared_percent,
            trace: args.trace,
            ..LocksConfig::new(seed)
        };
        match run(&config) {
            Ok(stats) => {
                total.grants += stats.grants;
                total.shared_grants += stats.shared_grants;
                total.shared_steps += stats.shared_steps;
                total.expiries += stats.expiries;
                total.leader_changes += stats.leader_changes;
                total.stalls += stats.stalls;
                total.held_steps += stats.held_steps;
            }
            Err(violation) => {
                failures += 1;
                eprintln!(
                    "{violation}\n  replay: cargo run --release --example sim -- --locks --seed {seed} --nodes {} --steps {} --clock-rate-min {} --shared-percent {}",
                    args.nodes, args.steps, args.clock_rate_min, args.shared_percent
                );
            }
        }
    }
    println!("| seeds | clients | grants | shared grants | expiries | leader failures | client stalls | steps held | steps shared by 2+ | violations |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {} | {} | {} | {} | {} | {} | {} | {} | {failures} |",
        args.nodes,
        total.grants,
        total.shared_grants,
        total.expiries,
        total.leader_changes,
        total.stalls,
        total.held_steps,
        total.shared_steps
    );
    println!(
        "{:.1} seeds/s",
        count as f64 / started.elapsed().as_secs_f64()
    );
    failures
}

fn main() {
    let mut args = Args::parse();
    if args.locks {
        if args.nodes == 0
            || !(args.clock_rate_min > 0.0 && args.clock_rate_min <= 1.0)
            || args.shared_percent > 100
        {
            eprintln!(
                "--locks takes 1 or more clients (--nodes), --clock-rate-min in (0, 1] and \
                 --shared-percent in 0..=100"
            );
            std::process::exit(2);
        }
        let (first, count) = args
            .seed
            .map_or((args.first_seed, args.seeds), |seed| (seed, 1));
        if run_locks(&args, first, count) > 0 {
            std::process::exit(1);
        }
        return;
    }
    if args.twopc {
        if !(1..=16).contains(&args.nodes) {
            eprintln!("--twopc takes 1 to 16 participants (--nodes)");
            std::process::exit(2);
        }
        let (first, count) = args
            .seed
            .map_or((args.first_seed, args.seeds), |seed| (seed, 1));
        if run_twopc(&args, first, count) > 0 {
            std::process::exit(1);
        }
        return;
    }
    if args.nodes == 0 || args.nodes + args.spare_nodes > synod::config::MEMBERS_MAX {
        eprintln!(
            "--nodes must be at least 1, and --nodes plus --spare-nodes at most {}",
            synod::config::MEMBERS_MAX
        );
        std::process::exit(2);
    }
    if args.disk_dir.is_none() && args.disk != "mem" {
        args.disk_dir = writable_shm();
    }
    if !["mem", "file", "mixed"].contains(&args.disk.as_str()) {
        eprintln!("--disk must be mem, file or mixed, not '{}'", args.disk);
        std::process::exit(2);
    }
    let faults = match faults(&args.faults) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.first_seed, args.seeds),
    };
    // Options that make no simulation (a lease no shorter than an election, say) are refused
    // here, once, with the reason, rather than in every run.
    let mut check = simulation_config(&args, &faults, first);
    check.file_disks = None; // nothing written for the check
    if let Err(error) = Simulation::new(check) {
        eprintln!("the options make no simulation: {error}");
        std::process::exit(2);
    }
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut total = SimStats::default();
    let mut failures = 0u64;
    let mut on_files = 0u64;
    for seed in first..first + count {
        let (simulation, result) = run_one(&args, &faults, seed);
        add(&mut total, simulation.stats());
        on_files += u64::from(args.file_disks(seed).is_some());
        if args.check_determinism {
            let (again, _) = run_one(&args, &faults, seed);
            if again.trace_hash() != simulation.trace_hash() {
                eprintln!(
                    "\nseed {seed}: NOT DETERMINISTIC ({:016x} vs {:016x})",
                    simulation.trace_hash(),
                    again.trace_hash()
                );
                failures += 1;
            }
        }
        if let Err(violation) = result {
            failures += 1;
            eprintln!("\n\nseed {seed}: VIOLATION of {}", violation.property);
            eprintln!("  {}", violation.detail);
            eprintln!("  last events:");
            for line in simulation.recent() {
                eprintln!("    {line}");
            }
            eprintln!(
                "  replay: cargo run --release --example sim -- --seed {seed} --nodes {} --spare-nodes {} --steps {} --liveness-steps {} --faults {} --kv-clients {} --lease-ticks {} --disk {}",
                args.nodes,
                args.spare_nodes,
                args.steps,
                args.liveness_steps,
                args.faults,
                args.kv_clients,
                args.lease_ticks,
                args.disk
            );
        }
        let done = seed - first + 1;
        if count > 1 && !terminal && (done % (count / 10).max(1) == 0 || done == count) {
            eprintln!("{done}/{count} seeds, {failures} failing");
        }
        if count > 1 && terminal && ((seed - first) % 50 == 49 || seed + 1 == first + count) {
            let width = 40;
            let filled = (done * width / count) as usize;
            eprint!(
                "\r[{}{}] {done}/{count} seeds, {failures} failing",
                "#".repeat(filled),
                ".".repeat(width as usize - filled)
            );
            std::io::stderr().flush().ok();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let runs = if args.check_determinism {
        2 * count
    } else {
        count
    };
    println!();
    println!("| seeds | nodes | steps | proposed | acknowledged | elections | violations |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {} | {} | {} | {} | {} | {failures} |",
        args.nodes, total.steps, total.proposed, total.acknowledged, total.elections
    );
    println!();
    println!("| faults injected | count |");
    println!("|---|---|");
    for (name, value) in [
        ("messages delivered", total.delivered),
        ("messages dropped (loss, partitions)", total.dropped),
        ("messages duplicated", total.duplicated),
        ("partitions", total.partitions),
        ("clogged links", total.clogs),
        ("crashes", total.crashes),
        (
            "crashes after a ready's messages, before its write",
            total.crashes_before_write,
        ),
        (
            "crashes after a ready's write, before its messages",
            total.crashes_after_write,
        ),
        (
            "crashes after saving a snapshot, before compacting",
            total.crashes_before_compaction,
        ),
        (
            "crashes after an installed snapshot's compaction, before the write",
            total.crashes_after_compaction,
        ),
        (
            "readies left undrained while messages arrived",
            total.readies_held,
        ),
        ("unsynced writes lost at crash", total.writes_lost),
        ("unsynced writes kept at crash", total.writes_kept),
        ("unsynced writes torn at crash", total.writes_torn),
        ("seeds on file disks", on_files),
        (
            "restarts recovered from files (checked)",
            total.file_recoveries,
        ),
        ("pauses", total.pauses),
        ("corrupt disks (node lost)", total.corrupt_disks),
        ("snapshots taken and logs compacted", total.compactions),
        ("restarts from a snapshot", total.snapshot_restarts),
        ("snapshots sent to a lagging node", total.snapshots_sent),
        ("snapshots installed from a peer", total.snapshots_installed),
        ("leadership transfers asked", total.transfers),
        ("leadership transfers completed", total.transfers_completed),
        ("leadership transfers abandoned", total.transfers_aborted),
        ("membership changes proposed", total.membership_proposed),
        (
            "membership changes refused (one at a time)",
            total.membership_refused,
        ),
        (
            "membership changes skipped (no leader or target)",
            total.membership_skipped,
        ),
        ("membership changes chosen", total.membership_chosen),
        ("members added", total.members_added),
        ("members removed", total.members_removed),
        ("members switched voter/learner", total.members_role_changed),
        ("spare nodes started", total.spares_started),
        ("messages from non-members refused", total.unknown_sender),
        (
            "kv operations issued (linearizability-checked)",
            total.kv_operations,
        ),
        ("kv operations answered", total.kv_returned),
        ("kv reads answered by read-index", total.kv_index_reads),
        ("reads answered under a leader lease", total.lease_reads),
        (
            "kv reads aborted (leadership ended, leader refused or silent)",
            total.kv_reads_aborted,
        ),
    ] {
        println!("| {name} | {value} |");
    }
    println!(
        "{:.1} seeds/s, {:.0} messages delivered/s, {:.0} steps/s ({runs} runs in {seconds:.1} s)",
        runs as f64 / seconds,
        total.delivered as f64 / seconds,
        total.steps as f64 / seconds
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
