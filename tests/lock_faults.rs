//! The lock service under faults, over many seeds, in the simulator's lock world
//! ([`synod::sim::locks`]): clients on clocks of their own that stall, leaders that fail,
//! lost proposals and answers; half the acquires shared, half exclusive. Checked after every
//! step: in the clients' own views, one client holds the lock exclusively or any number hold
//! it shared, and every token a client holds is one the service granted to its session, in
//! that mode.
//!
//! A failing seed replays alone: `SYNOD_LOCKS_SEED=N cargo test --test lock_faults` (or
//! `cargo run --release --example sim -- --locks --seed N`). `SYNOD_LOCKS_SEEDS=N` runs seeds
//! `0..N` (200 by default).

use synod::sim::locks::{run, LocksConfig};

fn seeds() -> Vec<u64> {
    match std::env::var("SYNOD_LOCKS_SEED") {
        Ok(seed) => vec![seed.parse().expect("SYNOD_LOCKS_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SYNOD_LOCKS_SEEDS").map_or(200, |n| n.parse().unwrap());
            (0..count).collect()
        }
    }
}

#[test]
fn exclusion_and_fencing_hold_when_client_clocks_are_within_the_margin() {
    let mut total = synod::sim::locks::LocksStats::default();
    for seed in seeds() {
        let config = LocksConfig {
            trace: std::env::var("SYNOD_LOCKS_TRACE").is_ok(),
            ..LocksConfig::new(seed)
        };
        let stats = run(&config).unwrap_or_else(|violation| panic!("{violation}"));
        total.grants += stats.grants;
        total.shared_grants += stats.shared_grants;
        total.shared_steps += stats.shared_steps;
        total.expiries += stats.expiries;
        total.leader_changes += stats.leader_changes;
        total.stalls += stats.stalls;
        total.held_steps += stats.held_steps;
    }
    eprintln!("{total:?}");
    // The runs must contend, expire sessions and change leaders, or they check little.
    assert!(total.grants > 1000 && total.expiries > 100 && total.leader_changes > 100);
    assert!(total.stalls > 100 && total.held_steps > 10_000);
    // Both modes, and shared holders together.
    assert!(total.shared_grants > 1000 && total.grants - total.shared_grants > 1000);
    assert!(total.shared_steps > 10_000);
}

#[test]
fn the_mode_mix_is_configurable() {
    for (shared_percent, all_shared) in [(0, false), (100, true)] {
        for seed in 0..20 {
            let config = LocksConfig {
                shared_percent,
                ..LocksConfig::new(seed)
            };
            let stats = run(&config).unwrap_or_else(|violation| panic!("{violation}"));
            assert!(stats.grants > 0);
            let expected = if all_shared { stats.grants } else { 0 };
            assert_eq!(stats.shared_grants, expected, "{config:?}");
            if !all_shared {
                assert_eq!(stats.shared_steps, 0, "{config:?}");
            }
        }
    }
}

#[test]
fn the_exclusion_checker_catches_clocks_slower_than_the_margin() {
    // Clients whose clocks run at half the leader's rate believe in their lease for up to
    // twice as long as the service keeps it: some seed must show two holders at once.
    let caught = (0..200).find_map(|seed| {
        let config = LocksConfig {
            clock_rate_min: 0.5,
            ..LocksConfig::new(seed)
        };
        run(&config).err()
    });
    let violation = caught.expect("slow clocks must break exclusion somewhere");
    assert_eq!(violation.property, "check_lock_exclusion", "{violation}");
}

#[test]
fn a_run_is_a_function_of_its_seed() {
    let config = LocksConfig::new(5);
    assert_eq!(run(&config), run(&config));
    let quiet = LocksConfig {
        faults: false,
        ..LocksConfig::new(5)
    };
    let stats = run(&quiet).unwrap();
    assert_eq!((stats.leader_changes, stats.stalls), (0, 0));
    assert!(stats.grants > 10);
}
