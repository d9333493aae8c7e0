//! Unreachable hosts on a 3-host lab fleet (issue 12): a host cut off before `up` fails it by
//! default naming the host and changing nothing; `--on-unreachable skip` deploys to the others
//! and leaves its replica alone (twice: the second knows it from the map the first pushed); `--on-unreachable reschedule` starts its replica on the others;
//! the next `up` after the host returns removes the stale copy and converges. And a host lost
//! mid-deploy — its sshd killed, its packets dropped, its processes frozen — ends `up` (exit 1,
//! the host named, the release rolled back) well within its deadline; the next `up` after the host
//! returns converges.
//!
//! "Ends" is checked with a watchdog far above the deadlines (never a timing assert): `up` that
//! hangs is killed and the test fails saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{describe, Lab};

const PROJECT: &str = "lost";

/// Far above every deadline `up` has (connect 10s + 5s, a lost host 20s, ssh's keepalive 15s,
/// the rollback's): an `up` still running then hangs.
const WATCHDOG: Duration = Duration::from_secs(240);

/// Three web replicas, one per host (spread over the lab's zones), replaced one at a time with a pause
/// between them, so that a fault injected a few seconds in lands mid-deploy.
fn compose(lab: &Lab) -> String {
    format!(
        r#"name: {PROJECT}
services:
  web:
    image: {image}
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
"#,
        image = lab.httpd_image(),
    )
}

fn write_compose(lab: &Lab) -> PathBuf {
    let path = lab.dir().join("unreachable-compose.yaml");
    std::fs::write(&path, compose(lab)).expect("write the compose file");
    path
}

fn command(lab: &Lab, file: &Path, version: u32, args: &[&str]) -> Command {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(file)
        .args(args)
        .env("VERSION", version.to_string());
    cmd
}

/// Runs to the end, or is killed at the watchdog (a failure: `up` must always end).
fn run(mut child: Child, what: &str) -> (Output, Duration) {
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not end within {}s: {}",
                WATCHDOG.as_secs(),
                describe(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    (child.wait_with_output().expect("output"), took)
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs the CLI")
}

fn cli(lab: &Lab, file: &Path, version: u32, args: &[&str]) -> (Output, Duration) {
    run(
        spawn(command(lab, file, version, args)),
        &format!("{args:?}"),
    )
}

/// Where the web replicas run, as `ps` reports them on the hosts that answer: host → replicas
/// (with the VERSION each runs is not shown by ps: the spec hash is not either; the count and the
/// hosts are what these tests check).
fn replicas(lab: &Lab, file: &Path) -> BTreeMap<String, Vec<u64>> {
    let (out, _) = cli(lab, file, 0, &["ps", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ps JSON ({e}): {}", describe(&out)));
    let mut by_host: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in rows {
        if r["service"] == "web" && r["state"] == "running" {
            let host = r["host"].as_str().unwrap_or_default().to_string();
            by_host
                .entry(host)
                .or_default()
                .push(r["replica"].as_u64().unwrap_or_default());
        }
    }
    for v in by_host.values_mut() {
        v.sort_unstable();
    }
    by_host
}

fn all_replicas(by_host: &BTreeMap<String, Vec<u64>>) -> Vec<u64> {
    let mut all: Vec<u64> = by_host.values().flatten().copied().collect();
    all.sort_unstable();
    all
}

/// The host that runs replica `n`.
fn host_of(by_host: &BTreeMap<String, Vec<u64>>, n: u64) -> String {
    by_host
        .iter()
        .find(|(_, r)| r.contains(&n))
        .map(|(h, _)| h.clone())
        .unwrap_or_else(|| panic!("replica {n} runs nowhere: {by_host:?}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_host_cut_off_fails_up_by_default_is_skipped_or_rescheduled_and_converges_when_back() {
    let Some(lab) = Lab::up(
        "a_host_cut_off_fails_up_by_default_is_skipped_or_rescheduled_and_converges_when_back",
        3,
    ) else {
        return;
    };
    let file = write_compose(&lab);
    let (out, _) = cli(&lab, &file, 1, &["up"]);
    assert!(out.status.success(), "first up: {}", describe(&out));
    let before = replicas(&lab, &file);
    assert_eq!(all_replicas(&before), [1, 2, 3], "{before:?}");
    let lost = host_of(&before, 3);
    lab.faults().cut_off(&lost).expect("cut off");

    // fail (the default): nothing changes anywhere, the host is named.
    let (out, took) = cli(&lab, &file, 2, &["up"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        err.contains(&lost) && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(err.contains("--on-unreachable"), "a hint: {err}");
    println!("fail: up gave up on the cut-off host in {took:?}");

    // skip: the others are deployed, the lost host's replica is not started elsewhere.
    let (out, took) = cli(&lab, &file, 2, &["up", "--on-unreachable", "skip"]);
    assert!(out.status.success(), "up skip: {}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("`{lost}` did not answer")) && err.contains("web-3"),
        "{err}"
    );
    let skipped = replicas(&lab, &file);
    assert_eq!(all_replicas(&skipped), [1, 2], "{skipped:?}");
    println!("skip: {took:?}");
    // Skipped again while the host is still silent: the service map the first pushed still
    // records web-3 there, so it is still not started anywhere else.
    let (out, _) = cli(&lab, &file, 3, &["up", "--on-unreachable", "skip"]);
    assert!(out.status.success(), "second up skip: {}", describe(&out));
    assert!(stderr(&out).contains("web-3"), "{}", describe(&out));
    let again = replicas(&lab, &file);
    assert_eq!(all_replicas(&again), [1, 2], "{again:?}");

    // reschedule: the lost host's replica starts on one of the others.
    let (out, _) = cli(&lab, &file, 3, &["up", "--on-unreachable", "reschedule"]);
    assert!(out.status.success(), "up reschedule: {}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("treated as gone") && err.contains("web-3 →"),
        "{err}"
    );
    let moved = replicas(&lab, &file);
    assert_eq!(all_replicas(&moved), [1, 2, 3], "{moved:?}");
    assert!(!moved.contains_key(&lost));

    // The host returns with its stale copy of web-3: the next `up` removes it and converges.
    lab.faults().reconnect(&lost).expect("reconnect");
    let stale = replicas(&lab, &file);
    assert_eq!(
        all_replicas(&stale),
        [1, 2, 3, 3],
        "the stale copy: {stale:?}"
    );
    let (out, _) = cli(&lab, &file, 3, &["up"]);
    assert!(out.status.success(), "up after return: {}", describe(&out));
    let converged = replicas(&lab, &file);
    assert_eq!(all_replicas(&converged), [1, 2, 3], "{converged:?}");
    let (out, _) = cli(&lab, &file, 3, &["up"]);
    assert!(out.status.success(), "a no-op up: {}", describe(&out));
    assert_eq!(replicas(&lab, &file), converged);
    let (out, _) = cli(&lab, &file, 3, &["down", "--volumes"]);
    assert!(out.status.success(), "down: {}", describe(&out));
}

/// How a host is made unreachable while `up` deploys, and how it comes back.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every sshd process of the host killed (the listener and the sessions).
    SshdKilled,
    /// Every packet to and from the host dropped by nftables in its namespace.
    PacketsDropped,
    /// Every process of the host stopped (SIGSTOP).
    Frozen,
}

const FAULT_TABLE: &str = "compose_fleet_test_fault";

impl Fault {
    fn inject(self, lab: &Lab, host: &str) {
        match self {
            Fault::SshdKilled => {
                let h = lab.faults().host(host).expect("the host");
                for pid in h.processes() {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() == "sshd" {
                        let _ = Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                    }
                }
            }
            Fault::PacketsDropped => {
                let script = format!(
                    "nft add table inet {FAULT_TABLE} && \
                     nft add chain inet {FAULT_TABLE} in '{{ type filter hook input priority -400; policy drop; }}' && \
                     nft add chain inet {FAULT_TABLE} out '{{ type filter hook output priority -400; policy drop; }}'"
                );
                let out = lab
                    .faults()
                    .exec(host, &["sh".into(), "-c".into(), script])
                    .expect("lab exec")
                    .output()
                    .expect("runs nft");
                assert!(out.status.success(), "nft: {}", describe(&out));
            }
            Fault::Frozen => lab.faults().freeze(host).expect("freeze"),
        }
    }

    fn heal(self, lab: &Lab, host: &str) {
        match self {
            Fault::SshdKilled => lab.faults().start_sshd(host).expect("sshd back"),
            Fault::PacketsDropped => {
                let out = lab
                    .faults()
                    .exec(
                        host,
                        &[
                            "nft".into(),
                            "delete".into(),
                            "table".into(),
                            "inet".into(),
                            FAULT_TABLE.into(),
                        ],
                    )
                    .expect("lab exec")
                    .output()
                    .expect("runs nft");
                assert!(out.status.success(), "nft: {}", describe(&out));
            }
            Fault::Frozen => lab.faults().thaw(host).expect("thaw"),
        }
    }
}

#[test]
fn a_host_lost_mid_deploy_ends_up_naming_it_and_the_next_up_converges() {
    let Some(lab) = Lab::up(
        "a_host_lost_mid_deploy_ends_up_naming_it_and_the_next_up_converges",
        3,
    ) else {
        return;
    };
    let file = write_compose(&lab);
    let (out, _) = cli(&lab, &file, 1, &["up"]);
    assert!(out.status.success(), "first up: {}", describe(&out));
    let mut version = 1;
    let mut report = Vec::new();
    for fault in [Fault::SshdKilled, Fault::PacketsDropped, Fault::Frozen] {
        let before = replicas(&lab, &file);
        assert_eq!(all_replicas(&before), [1, 2, 3], "{fault:?}: {before:?}");
        // Replicas are replaced in order, 4s apart: the last one's host still has work to do
        // a few seconds in.
        let lost = host_of(&before, 3);
        version += 1;
        let child = spawn(command(&lab, &file, version, &["up"]));
        std::thread::sleep(Duration::from_secs(3));
        fault.inject(&lab, &lost);
        let injected = Instant::now();
        let (out, _) = run(child, &format!("up with {fault:?} on {lost}"));
        let gave_up = injected.elapsed();
        fault.heal(&lab, &lost);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{fault:?}: {}", describe(&out));
        assert!(err.contains(&lost), "{fault:?}: the host is named: {err}");
        report.push(format!("{fault:?}: up ended {gave_up:?} after the fault"));
        // Back: the next `up` converges (the lease of the failed run was released or expires).
        let (out, _) = cli(&lab, &file, version, &["up", "--lock-wait", "60s"]);
        assert!(
            out.status.success(),
            "{fault:?}: up after the host returned: {}",
            describe(&out)
        );
        let after = replicas(&lab, &file);
        assert_eq!(all_replicas(&after), [1, 2, 3], "{fault:?}: {after:?}");
        let (out, _) = cli(&lab, &file, version, &["up"]);
        assert!(out.status.success(), "{fault:?}: no-op: {}", describe(&out));
    }
    println!("{}", report.join("\n"));
    let (out, _) = cli(&lab, &file, version, &["down", "--volumes"]);
    assert!(out.status.success(), "down: {}", describe(&out));
}
