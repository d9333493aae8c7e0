//! The deploy lock on a 2-host lab fleet (issue 12): of two concurrent `up`s exactly one deploys
//! and the other fails naming the holder (user@machine, pid), or with `--lock-wait` deploys after
//! it; the lease of an `up` killed with SIGKILL expires by itself, and the next `up` succeeds
//! without a manual unlock.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{describe, Lab};

/// Each test its own project name: two labs on one machine run their pods on one kernel, and
/// the same project and pod names there clash (seen as one lab's job killed by the other's).
const PROJECT: &str = "lockp";
const FROZEN: &str = "lockf";

fn up(lab: &Lab, stamp: &str, args: &[&str]) -> Command {
    up_of(lab, PROJECT, stamp, args)
}

fn up_of(lab: &Lab, project: &str, stamp: &str, args: &[&str]) -> Command {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lock/compose.yaml"))
        .args(["-p", project, "up", "--json"])
        .args(args)
        .env("REGISTRY", lab.registry())
        .env("STAMP", stamp)
        .env("USER", "locktester")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn deployed(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(r#""event":"create""#) || l.contains(r#""event":"replace""#))
}

fn spawn(mut cmd: Command) -> Child {
    cmd.spawn().expect("runs the CLI")
}

/// Reads `child`'s `--json` events until its first pod action: from then on it holds the lock.
/// Returns the child and the thread that drains its stdout, which returns every line.
fn until_deploying(child: Child) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    until(child, &[r#""event":"create""#, r#""event":"replace""#])
}

/// Reads `child`'s `--json` events until one of `markers` appears in one.
fn until(mut child: Child, markers: &[&str]) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    let markers: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if markers.iter().any(|m| line.contains(m.as_str())) {
                let _ = tx.send(());
            }
            all.push(line);
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the first `up` starts deploying");
    (child, lines)
}

#[test]
fn two_concurrent_ups_deploy_one_at_a_time_and_a_killed_ups_lease_expires() {
    let Some(lab) = Lab::up("deploy_lock", 2) else {
        return;
    };

    // 1. Two at once: exactly one deploys; the other fails at once, naming the holder.
    let (first, first_events) = until_deploying(spawn(up(&lab, "1", &[])));
    let holder = first.id();
    let second = spawn(up(&lab, "1", &[])).wait_with_output().expect("waits");
    let first = first.wait_with_output().expect("waits");
    let first_events = first_events.join().expect("stdout drained");
    assert!(
        first.status.success(),
        "first up: {}\n{}",
        describe(&first),
        first_events.join("\n")
    );
    assert_eq!(
        second.status.code(),
        Some(1),
        "second up: {}",
        describe(&second)
    );
    assert!(
        !deployed(&second),
        "the refused up changed something: {}",
        describe(&second)
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("is locked by another deploy: locktester@")
            && err.contains(&format!("(pid {holder}, since ")),
        "the error names the holder: {err}"
    );

    // 2. With `--lock-wait`, the second waits for the first and then deploys.
    let (first, _) = until_deploying(spawn(up(&lab, "2", &[])));
    let second = spawn(up(&lab, "3", &["--lock-wait", "2m"]))
        .wait_with_output()
        .expect("waits");
    let first = first.wait_with_output().expect("waits");
    assert!(first.status.success(), "first up: {}", describe(&first));
    assert!(second.status.success(), "waiting up: {}", describe(&second));
    assert!(
        deployed(&second),
        "the waiting up deployed: {}",
        describe(&second)
    );

    // 3. An `up` killed while it holds the lock: its lease stands for its TTL (another `up`
    //    is refused naming the dead pid), then expires by itself: the next `up` deploys.
    let (mut killed, _) = until_deploying(spawn(up(&lab, "4", &["--lock-ttl", "6s"])));
    let dead = killed.id();
    killed.kill().expect("SIGKILL");
    let _ = killed.wait();
    let killed_at = Instant::now();
    let refused = up(&lab, "5", &[]).output().expect("runs");
    assert!(
        killed_at.elapsed() < Duration::from_secs(6),
        "the refused up took too long to say so: {:?}",
        killed_at.elapsed()
    );
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(&format!("(pid {dead}, ")), "{err}");
    std::thread::sleep(Duration::from_secs(7).saturating_sub(killed_at.elapsed()));
    let after = up(&lab, "5", &[]).output().expect("runs");
    assert!(
        after.status.success(),
        "up after the lease expired: {}",
        describe(&after)
    );
    assert!(deployed(&after), "{}", describe(&after));
}

/// `ps --format json`: `service.replica` → pid, of the running containers.
fn running_pids(lab: &Lab, project: &str) -> Vec<(String, u64)> {
    let out = lab
        .cli()
        .arg("-f")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lock/compose.yaml"))
        .args(["-p", project, "ps", "--format", "json"])
        .env("REGISTRY", lab.registry())
        .output()
        .expect("runs ps");
    assert!(out.status.success(), "ps: {}", describe(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ps JSON");
    let mut pids: Vec<(String, u64)> = rows
        .iter()
        .filter(|r| r["state"] == "running")
        .map(|r| {
            (
                format!("{}.{}", r["service"].as_str().unwrap_or("?"), r["replica"]),
                r["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    pids.sort();
    pids
}

/// A deployer frozen (SIGSTOP) past its lease, whose lease then went to another deploy, changes
/// nothing when it resumes: its renewal is refused and it stops, and any write it sends carries a
/// stale fencing number that the agents refuse; it fails.
#[test]
fn a_deployer_frozen_past_its_lease_changes_nothing_when_it_resumes() {
    let Some(lab) = Lab::up("deploy_lock_frozen", 2) else {
        return;
    };
    let first = up_of(&lab, FROZEN, "0", &[]).output().expect("runs");
    assert!(first.status.success(), "first up: {}", describe(&first));

    // A starts deploying STAMP=1 and, its job started (the write landed, A watches it), is
    // frozen past its 2s lease.
    let (frozen, events) = until(
        spawn({
            let mut cmd = up_of(&lab, FROZEN, "1", &["--lock-ttl", "2s"]);
            cmd.args(["--timeout", "90s"]);
            cmd
        }),
        &[r#""event":"started""#],
    );
    let pid = nix::unistd::Pid::from_raw(frozen.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_secs(3));
    // B takes the expired lease and deploys STAMP=2.
    let second = up_of(&lab, FROZEN, "2", &[]).output().expect("runs");
    assert!(second.status.success(), "second up: {}", describe(&second));
    let converged = running_pids(&lab, FROZEN);
    assert!(!converged.is_empty(), "B's pods run");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    let resumed_at = Instant::now();
    let resumed = frozen.wait_with_output().expect("waits");
    let events = events.join().expect("stdout drained");
    assert!(
        !resumed.status.success(),
        "the resumed deployer must fail: {}",
        describe(&resumed)
    );
    let took = resumed_at.elapsed();
    let err = format!(
        "{}{}",
        events.join("\n"),
        String::from_utf8_lossy(&resumed.stderr)
    );
    eprintln!("resumed deployer's output after {took:?}:\n{err}");
    // Its lease renewal or its next write was refused (a stale fencing number): it stops at
    // once, well before its 90s deadline.
    assert!(
        err.contains("lost the deploy lock") || err.contains("replaced it"),
        "the resumed deployer learns it lost the lock: {err}"
    );
    assert!(
        took < Duration::from_secs(30),
        "it stopped at once: {took:?}"
    );
    assert_eq!(
        running_pids(&lab, FROZEN),
        converged,
        "the resumed deployer changed nothing"
    );
}
