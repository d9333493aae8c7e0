//! `cargo bench --bench up`: `compose-fleet up` on lab fleets of 1, 3 and 10 hosts
//! (`tests/fixtures/operate/chain.yaml`): the first `up` of a dependency chain of three services,
//! each answering 1 s after it starts, against its critical-path lower bound, and against
//! starting the same services level by level (one
//! `up --wait` per level of the graph: db; api and worker; web); then a no-op `up` (nothing
//! changed: one `Status` per host after `hello`, in parallel), 5 runs. On the 3-host fleet, also
//! the requests that fail during start-first rollouts of a replicated service under a steady
//! client load (`tests/fixtures/releases/rolling.yaml`: 3 `web` replicas rolled one at a time, a
//! client outside the fleet polling them every 50 ms through `front`'s published port, and a pod
//! polling them by name every 200 ms; target: 0).
//!
//! In the same run, the baseline: docker compose 1.29 (Debian's `docker-compose`) `up -d` of the
//! same file on one host, against a private `dockerd` (Debian's `docker.io`, started here in a
//! network namespace of its own, its data in a temporary directory) with the same httpd image
//! imported from the lab's busybox layer. Its `up -d` returns once the dependents are started, so
//! the figure that compares with `up` is "until every container is healthy"; both are printed.
//! Without `dockerd` or `docker-compose` the baseline is skipped with the reason.
//!
//! The bound is what the chain needs by its own definitions, plus what any `up` costs: each link
//! is healthy at the first health check that can pass — checks run every `interval` (100 ms)
//! from the start, as docker runs them, and the one at exactly 1 s races the `sleep 1` before
//! `httpd` listens, so the 1.1 s one — and a no-op `up` (connect, hello, status). The bound with
//! 1 s per link (start-ups only) is printed too. `up`'s figure is until its deploy is done (its
//! `--json` `done` event: every service healthy), and the whole process (until it exits: the
//! release recorded, the lock released) is printed beside it; each run deploys the chain afresh,
//! so no replica is an update and no monitor window is waited out.
//!
//! `UP_BENCH_SIZES=3` chooses the fleet sizes; `UP_BENCH_DOCKER=0` skips the baseline. Needs
//! root (the lab); prints figures, asserts nothing about time.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use compose_fleet::lab::Lab;
use nix::fcntl::{Flock, FlockArg};

const NOOP_RUNS: usize = 5;
/// The chain's start-ups: db, api, web each answer 1 s after starting, one after the other.
const CHAIN: Duration = Duration::from_secs(3);
/// The chain by its services' definitions: each link is healthy at its first check that can
/// pass, 1.1 s after its start (checks every 100 ms; the one at 1 s races the start-up).
const CHAIN_CHECKED: Duration = Duration::from_millis(3 * 1100);
/// The chain runs this many times; the median is printed.
const CHAIN_RUNS: usize = 3;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the up benchmark needs root (it starts lab fleets)");
        return;
    }
    let sizes: Vec<usize> = std::env::var("UP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 3, 10]);
    println!(
        "{:>5}  {:>22}  {:>9}  {:>9}  {:>9}",
        "hosts", "run", "wall_ms", "min_ms", "max_ms"
    );
    for n in sizes {
        if let Err(e) = bench_fleet(n) {
            eprintln!("{n} hosts: {e}");
        }
    }
    if std::env::var("UP_BENCH_DOCKER").as_deref() != Ok("0") {
        match docker_compose_baseline() {
            Ok(()) => {}
            Err(e) => eprintln!("docker compose 1.29 baseline: {e}"),
        }
    }
}

fn chain_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/operate/chain.yaml")
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
                .arg(chain_file())
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
        // `up --json`: the process's wall time, and the time until its `done` event (the
        // deploy finished, before the release is recorded and the lock released).
        let up_json = |args: &[&str]| -> Result<(Duration, Duration), String> {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| e.to_string())?;
            let started = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
                .arg("-i")
                .arg(lab.inventory())
                .arg("-f")
                .arg(chain_file())
                .args(args)
                .arg("--json")
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
            let done_ms = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == "done")
                .and_then(|v| v["time_ms"].as_u64())
                .ok_or("no `done` event in up --json")?;
            let done = Duration::from_millis(done_ms).saturating_sub(since_epoch);
            Ok((wall, done))
        };
        // The agents are pushed and the images pulled once, by a first deploy that is then
        // removed: the figures below are the deploy itself.
        up(&["up", "--wait"])?;
        up(&["down"])?;
        let mut runs = Vec::new();
        for _ in 0..CHAIN_RUNS {
            runs.push(up_json(&["up", "--wait"])?);
            up(&["down"])?;
        }
        runs.sort_by_key(|(_, done)| *done);
        let (whole, first) = runs[runs.len() / 2];
        let (fastest, slowest) = (runs[0].1, runs[runs.len() - 1].1);
        // Level by level: each level of the graph started, and waited for, before the next.
        let mut levels = Duration::ZERO;
        for level in [&["db"][..], &["api", "worker"], &["web"]] {
            let mut args = vec!["up", "--wait"];
            args.extend_from_slice(level);
            levels += up(&args)?;
        }
        // The floor for everything but the chain: a no-op round (connect, hello, status).
        let mut noop = Vec::new();
        for _ in 0..NOOP_RUNS {
            noop.push(up(&["up"])?);
        }
        noop.sort();
        let median = noop[noop.len() / 2];
        println!(
            "{:>5}  {:>22}  {:>9.0}  {:>9.0}  {:>9.0}  (until `done`: every service healthy; median of {CHAIN_RUNS})",
            n,
            "chain up",
            first.as_secs_f64() * 1000.0,
            fastest.as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0,
        );
        println!(
            "{:>5}  {:>22}  {:>9.0}  (the process, until it exits)",
            n,
            "chain up, whole",
            whole.as_secs_f64() * 1000.0,
        );
        println!(
            "{:>5}  {:>22}  {:>9.0}  {:>9.0}  {:>9.0}",
            n,
            "no-op up",
            median.as_secs_f64() * 1000.0,
            noop[0].as_secs_f64() * 1000.0,
            noop[noop.len() - 1].as_secs_f64() * 1000.0,
        );
        let bound = CHAIN_CHECKED + median;
        println!(
            "{:>5}  {:>22}  {:>9.0}  (3 × 1.1 s to each first passing check + a no-op round); chain/bound = {:.2}, whole/bound = {:.2}",
            n,
            "critical-path bound",
            bound.as_secs_f64() * 1000.0,
            first.as_secs_f64() / bound.as_secs_f64(),
            whole.as_secs_f64() / bound.as_secs_f64()
        );
        let starts = CHAIN + median;
        println!(
            "{:>5}  {:>22}  {:>9.0}  (3 × 1 s of start-ups + a no-op round); chain/start-ups = {:.2}",
            n,
            "start-ups only",
            starts.as_secs_f64() * 1000.0,
            first.as_secs_f64() / starts.as_secs_f64()
        );
        println!(
            "{:>5}  {:>22}  {:>9.0}  (3 × up --wait, one per level); levels/whole chain = {:.2}",
            n,
            "level by level",
            levels.as_secs_f64() * 1000.0,
            levels.as_secs_f64() / whole.as_secs_f64()
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

/// The runs of the docker compose baseline after a first, warming one.
const DOCKER_RUNS: usize = 3;

/// docker compose 1.29 `up -d` of the chain on one host, against a private `dockerd`.
fn docker_compose_baseline() -> Result<(), String> {
    for tool in ["dockerd", "docker", "docker-compose"] {
        if which(tool).is_none() {
            println!(
                "skipped: docker compose 1.29 baseline: `{tool}` is not installed (scripts/setup.sh installs docker.io and docker-compose)"
            );
            return Ok(());
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("cf-bench-docker")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let netns = format!("cfbench-docker-{}", std::process::id());
    let daemon = Dockerd::start(dir.path(), &netns)?;
    let result = (|| {
        let sock = format!("unix://{}", daemon.socket.display());
        // The lab's httpd image, imported from its one layer, named as the file names it with
        // REGISTRY=cfbench.
        let images = compose_fleet::lab::images::build_all("cfbench").map_err(|e| e.to_string())?;
        let httpd = images
            .iter()
            .find(|i| i.reference.ends_with("lab/httpd:latest"))
            .ok_or("no httpd image")?;
        let mut import = Command::new("docker")
            .env("DOCKER_HOST", &sock)
            .args([
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                r#"CMD ["httpd", "-f", "-p", "80", "-h", "/www"]"#,
                "-",
                &httpd.reference,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        import
            .stdin
            .take()
            .ok_or("no stdin")?
            .write_all(&httpd.layer)
            .map_err(|e| e.to_string())?;
        if !import.wait().map_err(|e| e.to_string())?.success() {
            return Err("docker import failed".into());
        }
        // docker compose 1.29 does not know the top-level `name:`: the project is named by -p.
        let text = std::fs::read_to_string(chain_file()).map_err(|e| e.to_string())?;
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("name:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let app = dir.path().join("app");
        std::fs::create_dir_all(&app).map_err(|e| e.to_string())?;
        std::fs::write(app.join("docker-compose.yml"), text).map_err(|e| e.to_string())?;
        let compose = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("docker-compose")
                .current_dir(&app)
                .env("DOCKER_HOST", &sock)
                .env("REGISTRY", "cfbench")
                .args(["-p", "chain"])
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "docker-compose {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        };
        let all_healthy = || -> bool {
            let out = Command::new("docker")
                .env("DOCKER_HOST", &sock)
                .args(["ps", "-a", "--format", "{{.Status}}"])
                .output();
            match out {
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    text.lines().count() == 4 && text.lines().all(|l| l.contains("(healthy)"))
                }
                Err(_) => false,
            }
        };
        let mut returned = Vec::new();
        let mut healthy = Vec::new();
        for run in 0..=DOCKER_RUNS {
            let started = Instant::now();
            compose(&["up", "-d"])?;
            let up_d = started.elapsed();
            let deadline = started + Duration::from_secs(60);
            while !all_healthy() {
                if Instant::now() > deadline {
                    return Err("the chain never turned healthy under docker compose".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let all = started.elapsed();
            compose(&["down", "-t", "1"])?;
            // The first run creates what later runs reuse (layers unpacked once): not counted.
            if run > 0 {
                returned.push(up_d);
                healthy.push(all);
            }
        }
        returned.sort();
        healthy.sort();
        for (what, runs) in [
            ("docker compose up -d", &returned),
            ("docker compose healthy", &healthy),
        ] {
            println!(
                "{:>5}  {:>22}  {:>9.0}  {:>9.0}  {:>9.0}",
                1,
                what,
                runs[runs.len() / 2].as_secs_f64() * 1000.0,
                runs[0].as_secs_f64() * 1000.0,
                runs[runs.len() - 1].as_secs_f64() * 1000.0,
            );
        }
        Ok(())
    })();
    drop(daemon);
    result
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A `dockerd` of the benchmark's own: in a network namespace of its own (its bridges and rules
/// never touch the machine's), data and sockets in `dir`; stopped and removed when dropped.
struct Dockerd {
    child: Child,
    netns: String,
    socket: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path, netns: &str) -> Result<Dockerd, String> {
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    s.success()
                        .then_some(())
                        .ok_or(format!("ip {} failed", args.join(" ")))
                })
        };
        ip(&["netns", "add", netns])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        let socket = dir.join("docker.sock");
        let log = File::create(dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts dockerd needs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip-masq=false"])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn();
        let mut daemon = match child {
            Ok(child) => Dockerd {
                child,
                netns: netns.to_string(),
                socket,
            },
            Err(e) => {
                let _ = ip(&["netns", "del", netns]);
                return Err(e.to_string());
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("docker")
                .env("DOCKER_HOST", format!("unix://{}", daemon.socket.display()))
                .args(["info", "--format", "{{.ServerVersion}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(format!(
                    "dockerd exited ({status}); see its log in {}",
                    dir.join("dockerd.log").display()
                ));
            }
            if Instant::now() > deadline {
                return Err("dockerd did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
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
