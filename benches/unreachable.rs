//! `cargo bench --bench unreachable`: the time `compose-fleet up` takes to give up on an
//! unreachable host, on a 3-host lab fleet, per failure mode: the host's link down, its sshd
//! killed, its packets dropped (nftables in its namespace), its processes frozen (SIGSTOP).
//! Twice each: the host silent before `up` starts (`up` fails before any change, naming it: the
//! default `--on-unreachable fail`), and the host lost mid-deploy, 3 s into a rolling update
//! (time from the fault to `up`'s exit, which includes rolling the others back). Needs root (the
//! lab); prints figures, asserts nothing about time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use compose_fleet::lab::Lab;
use nix::fcntl::{Flock, FlockArg};

const FAULT_TABLE: &str = "compose_fleet_bench_fault";

#[derive(Debug, Clone, Copy)]
enum Fault {
    LinkDown,
    SshdKilled,
    PacketsDropped,
    Frozen,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link down",
            Fault::SshdKilled => "sshd killed",
            Fault::PacketsDropped => "packets dropped",
            Fault::Frozen => "processes frozen",
        }
    }

    fn inject(self, lab: &Lab, host: &str) -> Result<(), String> {
        match self {
            Fault::LinkDown => lab.cut_off(host).map_err(|e| e.to_string()),
            Fault::SshdKilled => {
                // Every sshd of the host, the sessions' too: the listener alone would leave the
                // open connection working.
                let h = lab.host(host).map_err(|e| e.to_string())?;
                for pid in h.processes() {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() == "sshd" {
                        let _ = Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                    }
                }
                Ok(())
            }
            Fault::PacketsDropped => nft(
                lab,
                host,
                &format!(
                    "nft add table inet {FAULT_TABLE} && \
                     nft add chain inet {FAULT_TABLE} in '{{ type filter hook input priority -400; policy drop; }}' && \
                     nft add chain inet {FAULT_TABLE} out '{{ type filter hook output priority -400; policy drop; }}'"
                ),
            ),
            Fault::Frozen => lab.freeze(host).map_err(|e| e.to_string()),
        }
    }

    fn heal(self, lab: &Lab, host: &str) -> Result<(), String> {
        match self {
            Fault::LinkDown => lab.reconnect(host).map_err(|e| e.to_string()),
            Fault::SshdKilled => lab.start_sshd(host).map_err(|e| e.to_string()),
            Fault::PacketsDropped => {
                nft(lab, host, &format!("nft delete table inet {FAULT_TABLE}"))
            }
            Fault::Frozen => lab.thaw(host).map_err(|e| e.to_string()),
        }
    }
}

fn nft(lab: &Lab, host: &str, script: &str) -> Result<(), String> {
    let out = lab
        .exec(host, &["sh".into(), "-c".into(), script.into()])
        .map_err(|e| e.to_string())?
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the unreachable benchmark needs root (it starts a lab fleet)");
        return;
    }
    if let Err(e) = bench() {
        eprintln!("unreachable bench: {e}");
    }
}

fn compose(dir: &Path, registry: &str) -> Result<PathBuf, String> {
    let path = dir.join("compose.yaml");
    let text = format!(
        r#"name: unreachable-bench
services:
  web:
    image: {registry}/lab/httpd:latest
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    environment:
      VERSION: ${{VERSION:-1}}
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
      interval: 1s
      retries: 10
    deploy:
      replicas: 3
      placement: {{ preferences: [{{ spread: node.labels.zone }}] }}
      update_config: {{ parallelism: 1, delay: 4s }}
      resources:
        reservations: {{ cpus: "0.1", memory: 16m }}
"#
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

fn bench() -> Result<(), String> {
    let lock_file = File::create("/run/compose-fleet-lab.lock").map_err(|e| e.to_string())?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("cf-bench-unreachable")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let lab = Lab::new(&format!("benchlost-{}", std::process::id()), dir.path())
        .map_err(|e| e.to_string())?;
    let result = (|| {
        lab.up(3, None).map_err(|e| e.to_string())?;
        let registry = lab.registry().ok_or("the lab has no registry")?;
        let file = compose(dir.path(), &registry)?;
        let cli = |version: u32, args: &[&str]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_compose-fleet"));
            cmd.arg("-i")
                .arg(lab.inventory())
                .arg("-f")
                .arg(&file)
                .args(args)
                .env("VERSION", version.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            cmd
        };
        let run = |version: u32, args: &[&str]| -> Result<Output, String> {
            cli(version, args).output().map_err(|e| e.to_string())
        };
        let out = run(1, &["up"])?;
        if !out.status.success() {
            return Err(format!(
                "first up: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // The host of the last replica replaced: it still has work 3 s into an update.
        let lost = lab
            .hosts()
            .into_iter()
            .last()
            .map(|h| h.name)
            .ok_or("no host")?;
        println!(
            "{:>18}  {:>12}  {:>10}  {:>6}  names host",
            "mode", "when", "gave_up_ms", "exit"
        );
        let mut version = 1;
        for fault in [
            Fault::LinkDown,
            Fault::SshdKilled,
            Fault::PacketsDropped,
            Fault::Frozen,
        ] {
            // Silent before `up`: it fails before any change.
            fault.inject(&lab, &lost)?;
            version += 1;
            let started = Instant::now();
            let out = run(version, &["up"])?;
            let took = started.elapsed();
            fault.heal(&lab, &lost)?;
            row(fault, "before up", took, &out, &lost);
            // Lost mid-deploy.
            let child = cli(version, &["up"]).spawn().map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_secs(3));
            fault.inject(&lab, &lost)?;
            let injected = Instant::now();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let took = injected.elapsed();
            fault.heal(&lab, &lost)?;
            row(fault, "mid-deploy", took, &out, &lost);
            // Back to a converged fleet for the next mode.
            let out = run(version, &["up", "--lock-wait", "60s"])?;
            if !out.status.success() {
                return Err(format!(
                    "up after {}: {}",
                    fault.name(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let _ = run(version, &["down"]);
        Ok(())
    })();
    let _ = lab.down();
    result
}

fn row(fault: Fault, when: &str, took: Duration, out: &Output, host: &str) {
    println!(
        "{:>18}  {:>12}  {:>10.0}  {:>6}  {}",
        fault.name(),
        when,
        took.as_secs_f64() * 1000.0,
        out.status
            .code()
            .map_or("signal".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stderr).contains(host)
    );
}
