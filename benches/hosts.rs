//! `cargo bench --bench hosts`: the agent's size, and `compose-fleet hosts` against lab fleets of
//! 3 and 10 hosts, cold (agent missing everywhere) and warm (agent installed, daemon running):
//! wall time, SSH connections and remote commands per host, bytes uploaded. Needs root (the lab);
//! prints figures, asserts nothing about time.

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use compose_fleet::lab::Lab;
use compose_fleet::ssh::AgentBinary;
use nix::fcntl::{Flock, FlockArg};

const WARM_RUNS: usize = 5;

fn main() {
    let agent = match AgentBinary::locate(None) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("no agent: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "agent: {} bytes ({:.2} MiB), static musl, sha256 {}",
        agent.bytes().len(),
        agent.bytes().len() as f64 / (1 << 20) as f64,
        &agent.digest[..16]
    );
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: hosts benchmark needs root (it starts lab fleets)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("HOSTS_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 10]);
    println!(
        "{:>5}  {:>6}  {:>9}  {:>9}  {:>9}  {:>12}  {:>12}  {:>10}",
        "hosts", "run", "wall_ms", "min_ms", "max_ms", "conn/host", "cmds/host", "uploaded"
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
        .prefix("cf-bench-lab")
        .tempdir()
        .map_err(|e| e.to_string())?;
    // A lab of its own name, beside any lab the user has up.
    let lab = Lab::new(&format!("bench-{}", std::process::id()), dir.path())
        .map_err(|e| e.to_string())?;
    let result = (|| {
        lab.up(n, None).map_err(|e| e.to_string())?;
        let (cold, totals) = run_hosts(&lab)?;
        print_row(n, "cold", &[cold], &totals, n);
        let mut warm = Vec::new();
        let mut last = String::new();
        for _ in 0..WARM_RUNS {
            let (t, totals) = run_hosts(&lab)?;
            warm.push(t);
            last = totals;
        }
        print_row(n, "warm", &warm, &last, n);
        // The floor: one plain `ssh HOST true` (own connection, no multiplexing) to the first host.
        let mut plain = Vec::new();
        for _ in 0..WARM_RUNS {
            plain.push(plain_ssh(&lab)?);
        }
        plain.sort();
        println!(
            "{:>5}  {:>6}  {:>9.0}  {:>9.0}  {:>9.0}  (one `ssh lab-1 true`, for scale)",
            n,
            "ssh",
            plain[plain.len() / 2].as_secs_f64() * 1000.0,
            plain[0].as_secs_f64() * 1000.0,
            plain[plain.len() - 1].as_secs_f64() * 1000.0,
        );
        Ok(())
    })();
    let _ = lab.down();
    result
}

/// One `compose-fleet hosts` run: wall time and its totals line.
fn run_hosts(lab: &Lab) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(lab.inventory())
        .arg("hosts")
        .output()
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(format!("hosts failed: {stderr}"));
    }
    let totals = stderr
        .lines()
        .find(|l| l.starts_with("hosts: "))
        .unwrap_or_default()
        .to_string();
    Ok((wall, totals))
}

fn plain_ssh(lab: &Lab) -> Result<Duration, String> {
    let first = lab
        .hosts()
        .into_iter()
        .next()
        .ok_or("the lab has no hosts")?;
    let started = Instant::now();
    let status = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
        ])
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.known_hosts().display()
        ))
        .arg("-i")
        .arg(lab.identity())
        .arg(format!("root@{}", first.address))
        .arg("true")
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("ssh lab-1 true: {status}"));
    }
    Ok(started.elapsed())
}

fn field(totals: &str, key: &str) -> u64 {
    totals
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn print_row(n: usize, run: &str, walls: &[Duration], totals: &str, hosts: usize) {
    let mut ms: Vec<f64> = walls.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let median = ms[ms.len() / 2];
    println!(
        "{:>5}  {:>6}  {:>9.0}  {:>9.0}  {:>9.0}  {:>12}  {:>12.1}  {:>10}",
        n,
        run,
        median,
        ms[0],
        ms[ms.len() - 1],
        // One multiplexed master connection per host, by construction.
        1,
        field(totals, "commands") as f64 / hosts as f64,
        field(totals, "uploaded_bytes"),
    );
}
