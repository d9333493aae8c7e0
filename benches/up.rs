//! `cargo bench --bench up`: `compose-fleet up` on lab fleets of 3 and 10 hosts
//! (`tests/fixtures/operate/chain.yaml`): the first `up` of a dependency chain of three services,
//! each healthy 1 s after it starts, against its critical-path lower bound (3 s of start-ups,
//! plus one connect round); then a no-op `up` (nothing changed: one `Status` per host after
//! `hello`, in parallel), 5 runs. On the 3-host fleet, also the requests that fail during
//! start-first rollouts of a replicated service under a steady client load
//! (`tests/fixtures/releases/rolling.yaml`: 3 `web` replicas rolled one at a time, a client
//! outside the fleet polling them every 50 ms through `front`'s published port, and a pod polling
//! them by name every 200 ms; target: 0). Needs root (the lab); prints figures, asserts nothing
//! about time.

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
        if n == 3 {
            bench_rollout(&lab, &registry)?;
        }
        Ok(())
    })();
    let _ = lab.down();
    result
}

/// Start-first rollouts under a steady load; prints the requests made and failed.
fn bench_rollout(lab: &Lab, registry: &str) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const ROLLOUTS: u32 = 3;
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/releases/rolling.yaml");
    let cli = |stamp: u32, args: &[&str]| -> Result<std::process::Output, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
            .arg("-i")
            .arg(lab.inventory())
            .arg("-f")
            .arg(&fixture)
            .args(["-p", "benchroll"])
            .args(args)
            .env("REGISTRY", registry)
            .env("STAMP", stamp.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    };
    cli(0, &["up"])?;
    let ps = cli(0, &["ps", "--format", "json"])?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&ps.stdout).map_err(|e| e.to_string())?;
    let front = rows
        .iter()
        .find(|r| r["service"] == "front")
        .and_then(|r| r["host"].as_str())
        .ok_or("front does not run")?;
    let addr = format!(
        "{}:8080",
        lab.host(front).map_err(|e| e.to_string())?.address
    );
    let warm = Instant::now();
    while !get(&addr) {
        if warm.elapsed() > Duration::from_secs(30) {
            return Err(format!("{addr} never answered"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let poller = {
        let (stop, requests, failed) = (stop.clone(), requests.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                requests.fetch_add(1, Ordering::SeqCst);
                if !get(&addr) {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    for stamp in 1..=ROLLOUTS {
        cli(stamp, &["up"])?;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = poller.join();
    let logs = cli(ROLLOUTS, &["logs", "--no-color", "client"])?;
    let text = String::from_utf8_lossy(&logs.stdout);
    let said = |word: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().last() == Some(word))
            .count()
    };
    println!(
        "{:>5}  {:>22}  {:>9.0}  {ROLLOUTS} start-first rollouts of 3 replicas: through the published port {} requests, {} failed; by name from a pod {} requests, {} failed (target: 0)",
        3,
        "start-first rollouts",
        took.as_secs_f64() * 1000.0,
        requests.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        said("ok") + said("FAIL"),
        said("FAIL"),
    );
    cli(ROLLOUTS, &["down", "--volumes"])?;
    Ok(())
}

/// One GET of `front`'s page through its published port: whether it carried `web`'s answer.
fn get(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(sock) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let timeout = Duration::from_secs(5);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(b"GET /cgi-bin/p HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut body);
    String::from_utf8_lossy(&body).contains("web stamp")
}
