//! Deterministic simulation of the replicated WAL cores (the world and the oracle are in
//! `sim/mod.rs`): many seeds per run, each with crashes, a lossy network, failovers, zombie
//! owners and a faulty disk, then a heal phase that must converge.
//!
//! Every failure prints its seed and the command that replays it:
//! `STRATA_SIM_SEED=<n> cargo test -p strata-wal --test t70_replication_sim`.
//! A longer search: `STRATA_SIM_SEEDS=5000 cargo test -p strata-wal --test t70_replication_sim`
//! (seeds per test; `STRATA_SIM_STEPS` changes the events per seed).

mod sim;

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use sim::{Report, SimConfig};

const SEEDS_DEFAULT: u64 = 300;
const STEPS_DEFAULT: usize = 20_000;

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{key} must be a u64, got {v:?}"))
    })
}

/// The seeds to run: one replayed seed, or `count` fixed ones (CI stays stable).
fn seeds(count: u64) -> Vec<u64> {
    match env_u64("STRATA_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("STRATA_SIM_SEEDS").unwrap_or(count)).collect(),
    }
}

fn steps() -> usize {
    env_u64("STRATA_SIM_STEPS").map_or(STEPS_DEFAULT, |s| s as usize)
}

/// Runs one seed; on an oracle violation or a core assertion, fails naming the seed.
fn run_seed(cfg: SimConfig) -> Report {
    let hint = format!(
        "replay: STRATA_SIM_SEED={} cargo test -p strata-wal --test t70_replication_sim",
        cfg.seed
    );
    let what = format!(
        "seed {} (R={} W={})",
        cfg.seed, cfg.replicas, cfg.write_quorum
    );
    match panic::catch_unwind(AssertUnwindSafe(|| sim::run(&cfg))) {
        Ok(Ok(report)) => report,
        Ok(Err(violation)) => panic!("{what}: oracle violation: {violation}\n{hint}"),
        Err(cause) => {
            eprintln!("{what} panicked (message above)\n{hint}");
            panic::resume_unwind(cause)
        }
    }
}

/// With `STRATA_SIM_KEEP_GOING=1`, a survey: run every seed, count the failures, fail at the end.
fn keep_going() -> bool {
    std::env::var("STRATA_SIM_KEEP_GOING").is_ok_and(|v| v == "1")
}

/// Runs every seed and prints totals, checking that the runs exercised what they are for.
fn run_all(name: &str, seeds: &[u64], config: impl Fn(u64) -> SimConfig) {
    let started = Instant::now();
    let mut total = Report::default();
    let mut failed = Vec::new();
    for &seed in seeds {
        let r = if keep_going() {
            let cfg = config(seed);
            match panic::catch_unwind(AssertUnwindSafe(|| sim::run(&cfg))) {
                Ok(Ok(r)) => r,
                Ok(Err(violation)) => {
                    println!("{name}: seed {seed}: {violation}");
                    failed.push(seed);
                    continue;
                }
                Err(cause) => {
                    let msg = cause
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| cause.downcast_ref::<&str>().copied())
                        .unwrap_or("?");
                    println!("{name}: seed {seed}: panic: {msg}");
                    failed.push(seed);
                    continue;
                }
            }
        } else {
            run_seed(config(seed))
        };
        total.events += r.events;
        total.virtual_ms += r.virtual_ms;
        total.appended += r.appended;
        total.committed_entries += r.committed_entries;
        total.uploaded_entries += r.uploaded_entries;
        total.recoveries += r.recoveries;
        total.owners += r.owners;
        total.fenced_owners += r.fenced_owners;
        total.replica_crashes += r.replica_crashes;
        total.faulty_disks += r.faulty_disks;
        total.messages += r.messages;
        total.dropped += r.dropped;
        total.retransmits += r.retransmits;
        total.refused_full += r.refused_full;
        total.truncations += r.truncations;
        total.replicas_killed += r.replicas_killed;
        total.replacements += r.replacements;
        total.replacements_refused += r.replacements_refused;
    }
    println!(
        "{name}: {} seeds in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{name}: {} of {} seeds failed: {failed:?}",
        failed.len(),
        seeds.len()
    );
    if seeds.len() >= 50 {
        // Guard against a simulation that silently stopped doing anything interesting.
        assert!(
            total.committed_entries > 1000 * seeds.len() as u64 / 10,
            "{total:?}"
        );
        assert!(total.recoveries >= 2 * seeds.len() as u64, "{total:?}");
        assert!(
            total.fenced_owners > 0 && total.truncations > 0,
            "{total:?}"
        );
        assert!(
            total.replica_crashes > 0 && total.retransmits > 0,
            "{total:?}"
        );
        assert!(total.refused_full > 0, "{total:?}");
    }
}

#[test]
fn sim_three_replicas_write_quorum_two() {
    let steps = steps();
    run_all("R=3 W=2", &seeds(SEEDS_DEFAULT), |seed| SimConfig {
        seed,
        replicas: 3,
        write_quorum: 2,
        steps,
        lying_disk: false,
        spares: 0,
    });
}

/// The quorum shapes besides the default, chosen by the seed (so a replay picks the same one).
fn other_quorum(seed: u64) -> (u16, u16) {
    const SHAPES: [(u16, u16); 6] = [(1, 1), (3, 3), (3, 1), (5, 3), (5, 2), (5, 4)];
    SHAPES[(seed % SHAPES.len() as u64) as usize]
}

#[test]
fn sim_other_quorum_shapes() {
    let steps = steps();
    run_all("other quorums", &seeds(SEEDS_DEFAULT / 2), |seed| {
        let (replicas, write_quorum) = other_quorum(seed);
        SimConfig {
            seed: seed.wrapping_add(1 << 32),
            replicas,
            write_quorum,
            steps,
            lying_disk: false,
            spares: 0,
        }
    });
}

/// Replicas die for good and spares replace them (a membership change within an epoch): the
/// oracle must hold through crashes between catching a spare up, recording the new set and
/// switching to it.
#[test]
fn sim_dead_replicas_are_replaced_by_spares() {
    let steps = steps();
    let seeds = seeds(SEEDS_DEFAULT / 2);
    let replaced = std::cell::Cell::new(0u64);
    run_all("replacement", &seeds, |seed| {
        let (replicas, write_quorum) = if seed % 3 == 2 { (5, 3) } else { (3, 2) };
        SimConfig {
            seed: seed.wrapping_add(2 << 32),
            replicas,
            write_quorum,
            steps,
            lying_disk: false,
            spares: 2,
        }
    });
    // The totals are printed by run_all; check the runs replaced something.
    for &seed in seeds.iter().take(20) {
        let (replicas, write_quorum) = if seed % 3 == 2 { (5, 3) } else { (3, 2) };
        let r = run_seed(SimConfig {
            seed: seed.wrapping_add(2 << 32),
            replicas,
            write_quorum,
            steps,
            lying_disk: false,
            spares: 2,
        });
        replaced.set(replaced.get() + r.replacements);
    }
    if seeds.len() >= 20 {
        assert!(replaced.get() > 0, "no seed replaced a replica");
    }
}

/// One fresh seed per run keeps exploring; it is printed, and a failure names it.
#[test]
fn sim_one_random_seed() {
    let seed = env_u64("STRATA_SIM_SEED").unwrap_or_else(rand::random);
    println!("random seed {seed}");
    run_seed(SimConfig {
        seed,
        replicas: 3,
        write_quorum: 2,
        steps: steps() * 3,
        lying_disk: false,
        spares: 0,
    });
}

/// The oracle must be able to fail: with a disk that acknowledges fdatasync without persisting
/// (so a crash loses acknowledged entries), some seed must break a guarantee.
#[test]
fn oracle_catches_a_lying_disk() {
    let steps = steps();
    let tries = env_u64("STRATA_SIM_LYING_TRIES").unwrap_or(300);
    let caught = (0..tries).find(|&seed| {
        let cfg = SimConfig {
            seed,
            replicas: 3,
            write_quorum: 2,
            steps,
            lying_disk: true,
            spares: 0,
        };
        match panic::catch_unwind(AssertUnwindSafe(|| sim::run(&cfg))) {
            Ok(Ok(_)) => false,
            Ok(Err(violation)) => {
                println!("lying disk caught at seed {seed}: {violation}");
                true
            }
            Err(_) => {
                println!("lying disk caught at seed {seed} by a core assertion");
                true
            }
        }
    });
    assert!(
        caught.is_some(),
        "no seed of {tries} caught a disk that loses synced data"
    );
}
