//! `cargo bench --bench up`: `compose-fleet up` on lab fleets of 3 and 10 hosts
//! (`tests/fixtures/operate/chain.yaml`): the first `up` of a dependency chain of three services,
//! each healthy 1 s after it starts, against its critical-path lower bound (3 s of start-ups,
//! plus one connect round); then a no-op `up` (nothing changed: one `Status` per host after
//! `hello`, in parallel), 5 runs. Needs root (the lab); prints figures, asserts nothing about time.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use compose_fleet::lab::Lab;
use nix::fcntl::{Flock, FlockArg};

const NOOP_RUNS: usize = 5;
/// The chain's start-ups: db, api, web each answer 1 s after starting, one after the other.
const CHAIN: Duration = Duration::from_secs(3);

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the up benchmark needs root (it starts lab fleets)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("UP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 10]);
    println!(
        "{:>5}  {:>22}  {:>9}  {:>9}  {:>9}",
        "hosts", "run", "wall_ms", "min_ms", "max_ms"
    );
    for n in sizes {
        if let Err(e) = bench_fleet(n) {
            eprintln!("{n} hosts: {e}");
        }
    }
}

fn bench_fleet(n: usize) -> Result<(), String> {
    let lock_file = File::create("/run/compose-fleet-lab.lock").map_err(|e| e.to_string())?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("cf-bench-up")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let lab = Lab::new(&format!("benchup-{}", std::process::id()), dir.path())
        .map_err(|e| e.to_string())?;
    let result = (|| {
        lab.up(n, None).map_err(|e| e.to_string())?;
        let registry = lab.registry().ok_or("the lab has no registry")?;
        let up = |args: &[&str]| -> Result<Duration, String> {
            let started = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
                .arg("-i")
                .arg(lab.inventory())
                .arg("-f")
                .arg(
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/fixtures/operate/chain.yaml"),
                )
                .args(args)
                .env("REGISTRY", &registry)
                .output()
                .map_err(|e| e.to_string())?;
            let wall = started.elapsed();
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(wall)
        };
        // The agents are pushed and the images pulled once, by a first deploy that is then
        // removed: the figures below are the deploy itself.
        up(&["up", "--wait"])?;
        up(&["down"])?;
        let first = up(&["up", "--wait"])?;
        // The floor for everything but the chain: a no-op round (connect, hello, status).
        let mut noop = Vec::new();
        for _ in 0..NOOP_RUNS {
            noop.push(up(&["up"])?);
        }
        noop.sort();
        let median = noop[noop.len() / 2];
        println!(
            "{:>5}  {:>22}  {:>9.0}  {:>9}  {:>9}",
            n,
            "chain up",
            first.as_secs_f64() * 1000.0,
            "",
            ""
        );
        println!(
            "{:>5}  {:>22}  {:>9.0}  {:>9.0}  {:>9.0}",
            n,
            "no-op up",
            median.as_secs_f64() * 1000.0,
            noop[0].as_secs_f64() * 1000.0,
            noop[noop.len() - 1].as_secs_f64() * 1000.0,
        );
        let bound = CHAIN + median;
        println!(
            "{:>5}  {:>22}  {:>9.0}  (3 s of start-ups + a no-op round); chain/bound = {:.2}",
            n,
            "critical-path bound",
            bound.as_secs_f64() * 1000.0,
            first.as_secs_f64() / bound.as_secs_f64()
        );
        up(&["down"])?;
        Ok(())
    })();
    let _ = lab.down();
    result
}
