//! The windows inside the handling of one ready that the simulators open, and what they
//! catch.
//!
//! The replica world: a ready left undrained for a few steps while messages and ticks are
//! stepped in (`Faults::ready_hold`); a crash after a ready's messages and before its write,
//! or after its write and before the messages that waited for it (`Faults::crash_in_ready`);
//! a crash after saving a snapshot and before compacting the storage through it, or after an
//! installed snapshot's compaction and before the ready's write (`Faults::crash_in_snapshot`).
//! The two-phase-commit world: a participant's ready left undrained while messages arrive (a
//! duplicate vote request between the vote and its write), and crashes before and after a
//! participant's write.
//!
//! These are the windows two reviews found bugs in that the sweeps could not see (README,
//! "Adversarial review scenarios"): a participant that re-sent its yes vote before its
//! prepared record was written, and a crash between saving an installed snapshot and
//! compacting that brought stale values back as chosen.

use synod::sim::twopc::{run, TwoPcConfig, TwoPcStats};
use synod::sim::{Bugs, SimConfig, SimStats, Simulation};

/// Runs `config` (a safety phase, then liveness); panics on any violation.
fn run_config(config: SimConfig) -> Simulation {
    let seed = config.seed;
    let mut simulation = Simulation::new(config).expect("a valid simulation config");
    if let Err(violation) = simulation
        .run(1_500)
        .and_then(|()| simulation.check_liveness(3_000))
    {
        let tail: Vec<&str> = simulation.recent().collect();
        panic!("seed {seed}: {violation}\n{}", tail.join("\n"));
    }
    simulation
}

fn add(total: &mut SimStats, stats: &SimStats) {
    total.readies_held += stats.readies_held;
    total.crashes += stats.crashes;
    total.crashes_before_write += stats.crashes_before_write;
    total.crashes_after_write += stats.crashes_after_write;
    total.crashes_before_compaction += stats.crashes_before_compaction;
    total.crashes_after_compaction += stats.crashes_after_compaction;
    total.snapshots_installed += stats.snapshots_installed;
    total.snapshot_restarts += stats.snapshot_restarts;
    total.file_recoveries += stats.file_recoveries;
}

/// Snapshots taken and installed often, and a crash at every other one: the snapshot
/// windows open many times per run.
fn snapshot_heavy(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(3, seed);
    config.faults.compaction = 0.02;
    config.faults.crash_in_snapshot = 0.5;
    config
}

/// Every window opens under the default faults (`Faults::all`), and the cluster stays safe
/// and live through them.
#[test]
fn ready_holds_and_crashes_inside_a_ready_happen_under_the_default_faults() {
    let mut total = SimStats::default();
    for seed in 0..30 {
        let stats = run_config(SimConfig::new(3, seed)).stats().clone();
        add(&mut total, &stats);
    }
    eprintln!("{total:?}");
    assert!(total.readies_held >= 300, "{total:?}");
    assert!(total.crashes_before_write >= 3, "{total:?}");
    assert!(total.crashes_after_write >= 3, "{total:?}");
    assert!(total.crashes_before_compaction >= 10, "{total:?}");
}

/// The snapshot windows, on memory and on file disks (where each restart must recover from
/// the files exactly what the model holds, compaction marks of the first ready included).
#[test]
fn crashes_between_a_snapshot_and_its_compaction_are_recovered_from_on_both_disks() {
    let mut total = SimStats::default();
    for seed in 0..16 {
        let mut config = snapshot_heavy(seed);
        if seed % 2 == 1 {
            config.file_disks = Some(std::env::temp_dir());
        }
        let stats = run_config(config).stats().clone();
        add(&mut total, &stats);
    }
    eprintln!("{total:?}");
    assert!(total.crashes_before_compaction >= 40, "{total:?}");
    assert!(total.crashes_after_compaction >= 2, "{total:?}");
    assert!(total.snapshots_installed >= 10, "{total:?}");
    assert!(total.file_recoveries >= 40, "{total:?}");
}

#[test]
fn the_windows_are_deterministic() {
    for seed in [2, 3] {
        let first = run_config(snapshot_heavy(seed));
        let second = run_config(snapshot_heavy(seed));
        assert_eq!(first.trace_hash(), second.trace_hash());
        assert_eq!(first.stats(), second.stats());
    }
}

/// Runs `make(seed)` for seeds from 0 until a violation; returns the seed and the property
/// (`None` if none of `seeds` seeds fails).
fn first_failure(seeds: u64, make: impl Fn(u64) -> SimConfig) -> Option<(u64, &'static str)> {
    (0..seeds).find_map(|seed| {
        let mut simulation = Simulation::new(make(seed)).expect("a valid simulation config");
        simulation
            .run(1_500)
            .and_then(|()| simulation.check_liveness(3_000))
            .err()
            .map(|violation| (seed, violation.property))
    })
}

/// A storage that ignores `WriteBatch::compact_through` (the fix of the snapshot bug, from the
/// storage's side): after a crash between saving a snapshot and compacting, the restarted
/// replica asks the first write to drop the entries up to the snapshot; they stay, and the
/// restart after the next crash reads them back as chosen (or refuses to start over the
/// hole they leave). Caught by the snapshot window, and only through it: without
/// `crash_in_snapshot` the same 40 seeds pass.
#[test]
fn a_storage_that_ignores_compact_through_is_caught_through_the_snapshot_window() {
    let broken = |seed| {
        let mut config = snapshot_heavy(seed);
        let mut bugs = Bugs::default();
        bugs.storage_ignores_compact_through = true;
        config.bugs = bugs;
        config
    };
    let (seed, property) = first_failure(40, broken).expect("caught within 40 seeds");
    eprintln!("caught at seed {seed}: {property}");
    assert!(
        [
            "check_recovered_chosen_were_chosen",
            "check_restart_from_disk"
        ]
        .contains(&property),
        "{property}"
    );
    let without_the_window = |seed| {
        let mut config = broken(seed);
        config.faults.crash_in_snapshot = 0.0;
        config
    };
    assert_eq!(first_failure(40, without_the_window), None);
}

fn add_twopc(total: &mut TwoPcStats, stats: &TwoPcStats) {
    total.committed += stats.committed;
    total.participant_crashes += stats.participant_crashes;
    total.crashes_before_write += stats.crashes_before_write;
    total.crashes_after_write += stats.crashes_after_write;
    total.readies_held += stats.readies_held;
}

/// The 2PC world's windows open under its defaults, and atomicity, validity, termination and
/// durable-before-revealed hold through them.
#[test]
fn twopc_ready_holds_and_crashes_around_a_participant_write_happen() {
    let mut total = TwoPcStats::default();
    for seed in 0..100 {
        let stats = run(&TwoPcConfig::new(seed)).unwrap_or_else(|violation| panic!("{violation}"));
        add_twopc(&mut total, &stats);
    }
    eprintln!("{total:?}");
    assert!(total.readies_held >= 500, "{total:?}");
    assert!(total.crashes_before_write >= 100, "{total:?}");
    assert!(total.crashes_after_write >= 100, "{total:?}");
    assert!(total.committed >= 500, "{total:?}");
}

/// An application that sends a participant's yes votes and commit acknowledgements before
/// writing the records they reveal is caught as it sends them.
#[test]
fn twopc_durability_checker_catches_votes_sent_before_the_write() {
    let violation = (0..20)
        .find_map(|seed| {
            let config = TwoPcConfig {
                send_before_write: true,
                ..TwoPcConfig::new(seed)
            };
            run(&config).err()
        })
        .expect("caught within 20 seeds");
    assert_eq!(violation.property, "check_2pc_durable_before_revealed");
}
