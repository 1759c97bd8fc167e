//! Seed sweeps of the simulator over the replica: safety under every fault, then liveness.

use synod::sim::{Faults, SimConfig, Simulation};

fn run_seed(nodes: usize, seed: u64, faults: Faults) -> Simulation {
    let mut config = SimConfig::new(nodes, seed);
    config.faults = faults;
    let mut simulation = Simulation::new(config);
    if let Err(violation) = simulation.run(1_500) {
        let tail: Vec<&str> = simulation.recent().collect();
        panic!(
            "seed {seed} nodes {nodes}: {violation}\n{}",
            tail.join("\n")
        );
    }
    if let Err(violation) = simulation.check_liveness(3_000) {
        let tail: Vec<&str> = simulation.recent().collect();
        panic!(
            "seed {seed} nodes {nodes}: {violation}\n{:?}\n{}",
            simulation.stats(),
            tail.join("\n")
        );
    }
    simulation
}

#[test]
fn quiet_network_three_nodes() {
    let simulation = run_seed(3, 1, Faults::none());
    assert!(
        simulation.stats().acknowledged > 100,
        "{:?}",
        simulation.stats()
    );
}

#[test]
fn all_faults_three_nodes_many_seeds() {
    for seed in 0..40 {
        run_seed(3, seed, Faults::all());
    }
}

#[test]
fn all_faults_five_nodes_many_seeds() {
    for seed in 0..20 {
        run_seed(5, seed, Faults::all());
    }
}

#[test]
fn same_seed_same_trace() {
    let first = run_seed(3, 7, Faults::all());
    let second = run_seed(3, 7, Faults::all());
    assert_eq!(first.trace_hash(), second.trace_hash());
    assert_eq!(first.stats(), second.stats());
}
