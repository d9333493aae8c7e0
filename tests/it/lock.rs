//! The deploy lock on a 2-host lab fleet (issue 12): of two concurrent `up`s exactly one deploys
//! and the other fails naming the holder (user@machine, pid), or with `--lock-wait` deploys after
//! it; the lease of an `up` killed with SIGKILL expires by itself, and the next `up` succeeds
//! without a manual unlock.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{describe, Lab};

const PROJECT: &str = "lockp";

fn up(lab: &Lab, stamp: &str, args: &[&str]) -> Command {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lock/compose.yaml"))
        .args(["-p", PROJECT, "up", "--json"])
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
/// Returns the child (its stdout drained in a thread so it never blocks).
fn until_deploying(mut child: Child) -> Child {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(r#""event":"create""#) || line.contains(r#""event":"replace""#) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the first `up` starts deploying");
    child
}

#[test]
fn two_concurrent_ups_deploy_one_at_a_time_and_a_killed_ups_lease_expires() {
    let Some(lab) = Lab::up("deploy_lock", 2) else {
        return;
    };

    // 1. Two at once: exactly one deploys; the other fails at once, naming the holder.
    let first = until_deploying(spawn(up(&lab, "1", &[])));
    let holder = first.id();
    let second = spawn(up(&lab, "1", &[])).wait_with_output().expect("waits");
    let first = first.wait_with_output().expect("waits");
    assert!(first.status.success(), "first up: {}", describe(&first));
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
    let first = until_deploying(spawn(up(&lab, "2", &[])));
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
    let mut killed = until_deploying(spawn(up(&lab, "4", &["--lock-ttl", "6s"])));
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
