//! Releases on a 3-host lab fleet (issue 12): every `up` that changes something is a numbered
//! release recorded on the hosts; a release whose new replicas fail their health check is rolled
//! back on every host (the untouched pods keep their pids), `up` exits 1 naming what failed with
//! its last log lines; `rollback --to N` puts back release N's exact specs; a rolling update
//! replaces one replica at a time (`update_config.parallelism: 1`).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

use crate::support::{describe, Lab};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/releases/compose.yaml")
}

/// `compose-fleet -f FIXTURE -p PROJECT ARGS…` with STAMP and BAD set.
fn cli(lab: &Lab, project: &str, stamp: &str, bad: bool, args: &[&str]) -> Command {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(fixture())
        .args(["-p", project])
        .args(args)
        .env("REGISTRY", lab.registry())
        .env("STAMP", stamp)
        .env("BAD", if bad { "1" } else { "0" })
        .env("USER", "releasetester");
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("runs the CLI")
}

/// `ps --format json`: `service.replica` → pid, of the running containers.
fn pids(lab: &Lab, project: &str) -> Vec<(String, u64)> {
    let out = run(cli(lab, project, "0", false, &["ps", "--format", "json"]));
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

/// `releases --json`: one object per release, newest first.
fn releases(lab: &Lab, project: &str) -> Vec<serde_json::Value> {
    let out = run(cli(lab, project, "0", false, &["releases", "--json"]));
    assert!(out.status.success(), "releases: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON release"))
        .collect()
}

/// `plan --detailed-exitcode` of STAMP: 0 when every host runs exactly that file's specs.
fn plan_code(lab: &Lab, project: &str, stamp: &str) -> Option<i32> {
    let out = run(cli(
        lab,
        project,
        stamp,
        false,
        &["plan", "--detailed-exitcode"],
    ));
    out.status.code()
}

fn summary(r: &serde_json::Value) -> (u64, String) {
    (
        r["release"].as_u64().unwrap_or(0),
        r["status"].as_str().unwrap_or("?").to_string(),
    )
}

#[test]
fn a_release_that_fails_its_health_check_is_rolled_back_on_every_host() {
    let Some(lab) = Lab::up("releases_rollback", 3) else {
        return;
    };
    const P: &str = "relp";
    let first = run(cli(&lab, P, "1", false, &["up"]));
    assert!(first.status.success(), "release 1: {}", describe(&first));
    let before = pids(&lab, P);
    assert_eq!(before.len(), 4, "3 web replicas and the cache: {before:?}");
    let cache = |p: &[(String, u64)]| p.iter().find(|(s, _)| s == "cache.1").cloned();

    // Release 2 replaces every replica at once (PAR=3): all three hosts change, all fail, and
    // all three go back, one at a time (rollback_config.parallelism: 1).
    let started = Instant::now();
    let mut bad = cli(&lab, P, "2", true, &["up"]);
    bad.env("PAR", "3");
    let bad = run(bad);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&bad.stderr);
    eprintln!("failed release (3 hosts changed) took {took:?}:\n{err}");
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    assert!(
        err.contains("unhealthy") && err.contains("`web` replica"),
        "says what failed and where: {err}"
    );
    assert!(
        err.contains("release 2 is broken"),
        "shows the failing container's last log lines: {err}"
    );
    assert!(
        err.contains("release 2 failed and was rolled back")
            && err.contains("on release 1 again (3 pods restored"),
        "says it rolled back all three: {err}"
    );
    assert_eq!(
        err.matches("rollback batch").count(),
        3,
        "one at a time: {err}"
    );
    // Every host runs release 1's exact specs again; the cache was never touched.
    assert_eq!(
        plan_code(&lab, P, "1"),
        Some(0),
        "the fleet is on release 1"
    );
    let after = pids(&lab, P);
    assert_eq!(after.len(), 4, "{after:?}");
    assert_eq!(cache(&after), cache(&before), "the cache kept its pid");

    // Release 3, rolled one replica at a time (PAR=1), start-first: the first replica's new
    // generation fails beside the old one, the rollout stops there, that host goes back to the
    // generation that kept serving, and no replica restarted.
    let before = after;
    let bad = run(cli(&lab, P, "3", true, &["up"]));
    let err = String::from_utf8_lossy(&bad.stderr);
    eprintln!("failed release (1 host changed):\n{err}");
    assert_eq!(bad.status.code(), Some(1), "{}", describe(&bad));
    assert!(
        err.contains("release 3 failed and was rolled back")
            && err.contains("on release 1 again (1 pod restored"),
        "{err}"
    );
    assert_eq!(
        plan_code(&lab, P, "1"),
        Some(0),
        "the fleet is on release 1"
    );
    let after = pids(&lab, P);
    let kept: Vec<&(String, u64)> = after.iter().filter(|p| before.contains(p)).collect();
    assert_eq!(
        kept.len(),
        4,
        "the old generation served throughout and is back: {before:?} → {after:?}"
    );

    let listed: Vec<(u64, String)> = releases(&lab, P).iter().map(summary).collect();
    assert_eq!(
        listed,
        [
            (3, "rolled_back".to_string()),
            (2, "rolled_back".to_string()),
            (1, "succeeded".to_string())
        ]
    );
    // A run with nothing to change is no release.
    let noop = run(cli(&lab, P, "1", false, &["up"]));
    assert!(noop.status.success(), "{}", describe(&noop));
    assert_eq!(releases(&lab, P).len(), 3, "no release for a no-op up");
}

#[test]
fn rollback_to_a_release_restores_its_specs_and_leaves_the_rest_alone() {
    let Some(lab) = Lab::up("releases_manual", 3) else {
        return;
    };
    const P: &str = "relm";
    for stamp in ["1", "2"] {
        let out = run(cli(&lab, P, stamp, false, &["up"]));
        assert!(out.status.success(), "release {stamp}: {}", describe(&out));
    }
    let before = pids(&lab, P);
    assert_eq!(plan_code(&lab, P, "1"), Some(2), "release 2 differs from 1");

    let started = Instant::now();
    let back = run(cli(&lab, P, "2", false, &["rollback", "--to", "1"]));
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&back.stderr);
    eprintln!("rollback --to 1 took {took:?}:\n{err}");
    assert!(back.status.success(), "rollback: {}", describe(&back));
    assert!(
        err.contains("release 3: every host is on release 1's pods again"),
        "{err}"
    );
    // One replica at a time (rollback_config.parallelism: 1): three web batches.
    assert_eq!(
        err.matches("rollback batch").count(),
        3,
        "one batch per web replica: {err}"
    );
    assert_eq!(plan_code(&lab, P, "1"), Some(0), "release 1's exact specs");
    let after = pids(&lab, P);
    let cache = |p: &[(String, u64)]| p.iter().find(|(s, _)| s == "cache.1").cloned();
    assert_eq!(cache(&after), cache(&before), "the cache kept its pid");
    let listed = releases(&lab, P);
    assert_eq!(
        listed.iter().map(summary).collect::<Vec<_>>(),
        [
            (3, "succeeded".to_string()),
            (2, "succeeded".to_string()),
            (1, "succeeded".to_string())
        ]
    );
    assert_eq!(listed[0]["rollback_of"], 1);
    // `rollback` with no number goes to the good release before the current one.
    let unknown = run(cli(&lab, P, "2", false, &["rollback", "--to", "9"]));
    assert_eq!(unknown.status.code(), Some(1), "{}", describe(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("release 9 is not recorded"),
        "{}",
        describe(&unknown)
    );
}

/// `ps --format json` rows of `web`: (replica, state, health).
fn web_rows(lab: &Lab, project: &str) -> Option<Vec<(u64, String, String)>> {
    let out = run(cli(lab, project, "0", false, &["ps", "--format", "json"]));
    if !out.status.success() {
        return None;
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        rows.iter()
            .filter(|r| r["service"] == "web")
            .map(|r| {
                (
                    r["replica"].as_u64().unwrap_or(0),
                    r["state"].as_str().unwrap_or("").to_string(),
                    r["health"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn a_rolling_update_replaces_one_replica_at_a_time() {
    let Some(lab) = Lab::up("releases_rolling", 3) else {
        return;
    };
    const P: &str = "relr";
    let first = run(cli(&lab, P, "1", false, &["up"]));
    assert!(first.status.success(), "release 1: {}", describe(&first));

    // Sample `ps` while release 2 rolls out.
    let started = Instant::now();
    let child = cli(&lab, P, "2", false, &["up", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs up");
    let mut samples = Vec::new();
    let child = {
        let mut child = child;
        while child.try_wait().expect("polls").is_none() {
            if let Some(rows) = web_rows(&lab, P) {
                samples.push(rows);
            }
        }
        child
    };
    let out = child.wait_with_output().expect("waits");
    let took = started.elapsed();
    assert!(out.status.success(), "release 2: {}", describe(&out));

    // From the events: a replica is down from its `replace` until its `healthy`; never more
    // than one at once, and each replace comes after the previous replica turned healthy.
    let mut down = std::collections::BTreeSet::new();
    let mut most = 0;
    let mut replaced = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match e["event"].as_str() {
            Some("replace") => {
                let pod = e["pod"].as_str().unwrap_or("?").to_string();
                replaced.push(pod.clone());
                down.insert(pod);
                most = most.max(down.len());
            }
            Some("healthy") if e["service"] == "web" => {
                down.remove(&format!("web-{}", e["replica"]));
            }
            _ => {}
        }
    }
    replaced.sort();
    assert_eq!(replaced, ["web-1", "web-2", "web-3"], "{}", describe(&out));
    assert_eq!(most, 1, "at most `parallelism` (1) replica down at once");
    assert!(
        down.is_empty(),
        "every replaced replica turned healthy: {down:?}"
    );

    // From `ps`, sampled meanwhile: the service is never down. (A `ps` sample is not one instant:
    // it asks the hosts in parallel, and a host may answer from just before the flow saw the
    // previous replica healthy and another from just after it replaced the next — so a sample
    // can show two replicas in transition though the flow never had two; the events above are
    // the exact check of `parallelism`.)
    let least = samples
        .iter()
        .map(|rows| {
            rows.iter()
                .filter(|(_, s, h)| s == "running" && h == "healthy")
                .count()
        })
        .min()
        .unwrap_or(3);
    eprintln!(
        "rolling update of 3 replicas (parallelism 1) took {took:?}; {} ps samples, at least {least} healthy in each",
        samples.len()
    );
    assert!(!samples.is_empty(), "ps answered during the rollout");
    assert!(least >= 1, "the service is never down: {samples:?}");

    // For comparison (a figure, not an assertion): every replica at once (PAR=3).
    let started = Instant::now();
    let mut all = cli(&lab, P, "3", false, &["up"]);
    all.env("PAR", "3");
    let all = run(all);
    assert!(all.status.success(), "release 3: {}", describe(&all));
    eprintln!(
        "the same update with parallelism 3 took {:?}",
        started.elapsed()
    );

    // `delay: 2s`: each next replica starts at least 2 s after the previous one turned healthy.
    let mut delayed = cli(&lab, P, "4", false, &["up", "--json"]);
    delayed.env("DELAY", "2s");
    let delayed = run(delayed);
    assert!(
        delayed.status.success(),
        "release 4: {}",
        describe(&delayed)
    );
    let mut healthy = Vec::new();
    let mut started = Vec::new();
    for line in String::from_utf8_lossy(&delayed.stdout).lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let t = e["time_ms"].as_u64().unwrap_or(0);
        match e["event"].as_str() {
            Some("healthy") => healthy.push(t),
            Some("started") => started.push(t),
            _ => {}
        }
    }
    started.sort_unstable();
    assert_eq!(started.len(), 3, "{}", describe(&delayed));
    for s in &started[1..] {
        let before = healthy
            .iter()
            .filter(|h| *h <= s)
            .max()
            .copied()
            .unwrap_or(0);
        assert!(
            s - before >= 2000,
            "a replica started {} ms after the previous turned healthy, under the 2 s delay",
            s - before
        );
    }
    let listed: Vec<(u64, String)> = releases(&lab, P).iter().map(summary).collect();
    assert_eq!(
        listed,
        [
            (4, "succeeded".to_string()),
            (3, "succeeded".to_string()),
            (2, "succeeded".to_string()),
            (1, "succeeded".to_string())
        ]
    );
}

/// `update_config.monitor`: replicas that pass their health check and break 3 s later, inside
/// the monitor window, fail the release after the flow said they were healthy; it is rolled back.
#[test]
fn a_replica_failing_inside_its_monitor_window_fails_and_rolls_back_the_release() {
    let Some(lab) = Lab::up("releases_monitor", 3) else {
        return;
    };
    const P: &str = "relw";
    let first = run(cli(&lab, P, "1", false, &["up"]));
    assert!(first.status.success(), "release 1: {}", describe(&first));
    let mut late = cli(&lab, P, "2", false, &["up"]);
    late.env("BAD", "late")
        .env("PAR", "3")
        .env("MONITOR", "12s");
    let started = Instant::now();
    let late = run(late);
    let err = String::from_utf8_lossy(&late.stderr);
    eprintln!("late-failing release took {:?}:\n{err}", started.elapsed());
    assert_eq!(late.status.code(), Some(1), "{}", describe(&late));
    assert!(
        err.contains("failed within its monitor window") && err.contains("unhealthy"),
        "{err}"
    );
    assert!(
        err.contains("release 2 broke late"),
        "with its last log lines: {err}"
    );
    assert!(
        err.contains("release 2 failed and was rolled back"),
        "{err}"
    );
    assert_eq!(
        plan_code(&lab, P, "1"),
        Some(0),
        "the fleet is on release 1"
    );
    let listed: Vec<(u64, String)> = releases(&lab, P).iter().map(summary).collect();
    assert_eq!(
        listed,
        [(2, "rolled_back".to_string()), (1, "succeeded".to_string())]
    );
}

/// One HTTP/1.0 GET of `path` on `addr`, with a short deadline; the response when it answered
/// 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut raw = Vec::new();
    s.take(64 * 1024).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    // The CGI's own header lines end in a bare LF: only the status line is looked at.
    let status = text.lines().next()?;
    status.contains(" 200 ").then_some(text)
}

/// Requests a client made and those that failed.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    failed: u64,
}

/// Polls `addr` (the published port of `front`) until `stop`, counting answers without a `web
/// stamp` (refused, cut, timed out, or `front` could not reach `web` by name) as failed.
fn poll_published(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        let mut t = Tally::default();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            t.requests += 1;
            let ok = http_get(&addr, "/cgi-bin/p").is_some_and(|b| b.contains("web stamp"));
            if !ok {
                t.failed += 1;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        t
    })
}

/// The must-hold of issue 12: changing one service's environment replaces its replicas one
/// `parallelism` batch at a time, start-first, with no failed request from a client polling the
/// service by name from a pod, nor from one polling it through a published port; each old
/// generation is retired after its replacement is healthy, and none is left behind.
#[test]
fn a_start_first_rolling_update_fails_no_request_by_name_or_through_the_published_port() {
    let Some(lab) = Lab::up("releases_start_first", 3) else {
        return;
    };
    const P: &str = "roll";
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/releases/rolling.yaml");
    let cli = |stamp: &str, args: &[&str]| {
        let mut cmd = lab.cli();
        cmd.arg("-f")
            .arg(&fixture)
            .args(["-p", P])
            .args(args)
            .env("REGISTRY", lab.registry())
            .env("STAMP", stamp);
        cmd
    };
    let first = run(cli("1", &["up"]));
    assert!(first.status.success(), "release 1: {}", describe(&first));

    // Where `front` publishes its port; it answers once its host has the service map.
    let out = run(cli("1", &["ps", "--format", "json"]));
    assert!(out.status.success(), "ps: {}", describe(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ps JSON");
    let front_host = rows
        .iter()
        .find(|r| r["service"] == "front")
        .and_then(|r| r["host"].as_str())
        .expect("front runs")
        .to_string();
    let published = format!("{}:8080", lab.address(&front_host));
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !http_get(&published, "/cgi-bin/p").is_some_and(|b| b.contains("web stamp 1")) {
        assert!(
            Instant::now() < deadline,
            "{published} never answered with web's page"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_published(published.clone(), stop.clone());
    let started = Instant::now();
    let out = run(cli("2", &["up", "--json"]));
    let took = started.elapsed();
    // A little more load after the end: the last old generation is gone by now.
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let tally = poller.join().expect("the poller");
    assert!(out.status.success(), "release 2: {}", describe(&out));

    // The events: one replica at a time (a replaced replica is in flight from its `replace`
    // until it is healthy), each old generation retired after its replacement turned healthy.
    let mut in_flight = std::collections::BTreeSet::new();
    let mut healthy = std::collections::BTreeSet::new();
    let (mut most, mut replaced, mut retired) = (0, Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let pod = e["pod"].as_str().unwrap_or("?").to_string();
        match e["event"].as_str() {
            Some("replace") => {
                replaced.push(pod.clone());
                in_flight.insert(pod);
                most = most.max(in_flight.len());
            }
            Some("healthy") if e["service"] == "web" => {
                let pod = format!("web-{}", e["replica"]);
                in_flight.remove(&pod);
                healthy.insert(pod);
            }
            Some("retire") => {
                assert!(
                    healthy.contains(&pod),
                    "{pod}'s old generation retired before the new one was healthy"
                );
                retired.push(pod);
            }
            _ => {}
        }
    }
    replaced.sort();
    retired.sort();
    assert_eq!(replaced, ["web-1", "web-2", "web-3"], "{}", describe(&out));
    assert_eq!(retired, replaced, "every old generation retired");
    assert_eq!(most, 1, "one `parallelism` (1) batch at a time");

    // The client in a pod, by name: not one failure since its first answer.
    let logs = run(cli("2", &["logs", "--no-color", "client"]));
    assert!(logs.status.success(), "logs: {}", describe(&logs));
    let text = String::from_utf8_lossy(&logs.stdout);
    let said = |word: &str| {
        text.lines()
            .filter(|l| l.split_whitespace().last() == Some(word))
            .count()
    };
    let (ok, failed) = (said("ok"), said("FAIL"));
    eprintln!(
        "start-first rollout of 3 replicas took {took:?}; through the published port: {} requests, {} failed; by name from a pod: {} requests, {failed} failed",
        tally.requests,
        tally.failed,
        ok + failed
    );
    assert!(tally.requests >= 20, "the client polled: {tally:?}");
    assert_eq!(
        tally.failed, 0,
        "no failed request through the published port"
    );
    assert!(ok >= 20, "the pod polled by name: {}", describe(&logs));
    assert_eq!(failed, 0, "no failed request by name: {text}");

    // Each host runs one generation of its replica: no old one left behind.
    assert_eq!(plan_code_of(&lab, &fixture, P, "2"), Some(0));
    for host in lab.host_names() {
        let out = lab.ssh(
            &host,
            &format!("ls /var/lib/compose-fleet/projects/{P}/pods"),
        );
        let dirs = String::from_utf8_lossy(&out.stdout).into_owned();
        let webs = dirs.lines().filter(|d| d.starts_with("web-")).count();
        assert_eq!(webs, 1, "{host} holds one web instance: {dirs}");
    }
    let down = run(cli("2", &["down", "--volumes"]));
    assert!(down.status.success(), "down: {}", describe(&down));
}

/// `plan --detailed-exitcode` of `fixture` with STAMP.
fn plan_code_of(lab: &Lab, fixture: &std::path::Path, project: &str, stamp: &str) -> Option<i32> {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(fixture)
        .args(["-p", project, "plan", "--detailed-exitcode"])
        .env("REGISTRY", lab.registry())
        .env("STAMP", stamp);
    run(cmd).status.code()
}
