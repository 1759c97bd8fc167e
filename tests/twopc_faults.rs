//! Two-phase commit under faults, over many seeds, in the simulator's 2PC world
//! ([`synod::sim::twopc`]): lost, duplicated and reordered messages, participants that crash
//! (also between their write and the messages that needed it), coordinators that crash and
//! are replaced by another one recovered from the decision log. Checked: atomicity, validity
//! and termination.
//!
//! A failing seed replays alone: `SYNOD_TWOPC_SEED=N cargo test --test twopc_faults` (or
//! `cargo run --release --example sim -- --twopc --seed N`, with `--trace` to see each step).
//! `SYNOD_TWOPC_SEEDS=N` runs seeds `0..N` (300 by default).

use synod::sim::twopc::{run, TwoPcConfig};

#[test]
fn atomicity_validity_and_termination_under_faults() {
    let seeds: Vec<u64> = match std::env::var("SYNOD_TWOPC_SEED") {
        Ok(seed) => vec![seed.parse().expect("SYNOD_TWOPC_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SYNOD_TWOPC_SEEDS").map_or(300, |n| n.parse().unwrap());
            (0..count).collect()
        }
    };
    let (mut committed, mut aborted, mut takeovers) = (0, 0, 0);
    for seed in seeds {
        let stats = run(&TwoPcConfig::new(seed)).unwrap_or_else(|violation| panic!("{violation}"));
        committed += stats.committed;
        aborted += stats.aborted;
        takeovers += stats.takeovers;
    }
    eprintln!("{committed} commits, {aborted} aborts, {takeovers} coordinator takeovers");
    // The runs must exercise both outcomes and takeovers, or they check little.
    assert!(committed > 100 && aborted > 100 && takeovers > 100);
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let config = TwoPcConfig::new(11);
    assert_eq!(run(&config), run(&config));
    let quiet = TwoPcConfig {
        faults: false,
        ..TwoPcConfig::new(3)
    };
    let stats = run(&quiet).unwrap();
    assert_eq!((stats.takeovers, stats.participant_crashes), (0, 0));
    assert!(stats.committed > 0);
}
