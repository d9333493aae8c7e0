//! `up`, `ps` and `down` on a 3-host lab fleet with `examples/jobs` (lab registry images only):
//! every service's pods run and `ps` shows them (healthy where checked); a second `up` changes
//! nothing (same pids); a changed environment replaces only that service's pods; `up --dry-run`
//! and `plan --detailed-exitcode` say what would change; `down` leaves no pod; a one-shot job that
//! exits 1 fails `up` with exit 1, naming it, with its last log lines, and `api` never starts.
//! Cross-host traffic is not tested here (pod networking across hosts is another issue's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Instant;

use serde_json::Value;

use crate::support::{describe, Lab};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/jobs/compose.yaml")
}

/// `compose-fleet -i LAB -f examples/jobs/compose.yaml -p PROJECT ARGS…` with `env` set.
fn cli(lab: &Lab, project: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let started = Instant::now();
    let out = lab
        .cli()
        .arg("-f")
        .arg(example())
        .args(["-p", project])
        .args(args)
        .env_remove("API_MODE")
        .env_remove("MIGRATE_EXIT")
        // The example's images come from `${REGISTRY}`: this lab's own registry.
        .env("REGISTRY", lab.registry())
        .envs(env.iter().copied())
        .output()
        .expect("runs the CLI");
    eprintln!(
        "timing: {} {} took {:.1}s",
        project,
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    out
}

/// `ps --format json` as rows keyed by `service.replica`.
fn ps(lab: &Lab, project: &str) -> BTreeMap<String, Value> {
    let out = cli(lab, project, &[], &["ps", "--format", "json"]);
    assert!(out.status.success(), "ps failed: {}", describe(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ps prints JSON");
    rows.into_iter()
        .map(|r| {
            (
                format!("{}.{}", r["service"].as_str().unwrap_or("?"), r["replica"]),
                r,
            )
        })
        .collect()
}

/// The `--json` events of `up`, each line parsed.
fn events(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn changed_pods(events: &[Value]) -> Vec<String> {
    let mut pods: Vec<String> = events
        .iter()
        .filter(|e| {
            matches!(
                e["event"].as_str(),
                Some("create" | "replace" | "remove" | "restart")
            )
        })
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap_or(""),
                e["pod"].as_str().unwrap_or("")
            )
        })
        .collect();
    pods.sort();
    pods
}

#[test]
fn up_runs_every_service_then_changes_only_what_changed_and_down_removes_all() {
    let Some(lab) = Lab::up("up_runs_every_service", 3) else {
        return;
    };
    let project = "jobs";

    // 1. A fresh fleet: every pod is created.
    let out = cli(&lab, project, &[], &["up", "--json"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let evs = events(&out);
    assert_eq!(
        changed_pods(&evs),
        [
            "create api-1",
            "create api-2",
            "create cache-1",
            "create migrate-1",
            "create web-1",
            "create web-2"
        ]
    );
    // The job ran to completion before `api` was created.
    let pos = |pred: &dyn Fn(&Value) -> bool| evs.iter().position(pred);
    let migrated =
        pos(&|e| e["event"] == "exited" && e["service"] == "migrate").expect("migrate exited");
    assert_eq!(evs[migrated]["code"], 0);
    let api = pos(&|e| e["event"] == "create" && e["pod"] == "api-1").expect("api created");
    assert!(
        migrated < api,
        "api was created before migrate finished: {evs:?}"
    );

    let rows = ps(&lab, project);
    assert_eq!(rows.len(), 6, "{rows:?}");
    for (name, r) in &rows {
        if name.starts_with("migrate") {
            assert_eq!(
                (r["state"].as_str(), r["exit_code"].as_i64()),
                (Some("exited"), Some(0)),
                "{r}"
            );
        } else {
            assert_eq!(r["state"], "running", "{name}: {r}");
            // Every pod is on the fleet network: an address from its host's pod subnet.
            let ip = r["ip"].as_str().unwrap_or_default();
            assert!(ip.starts_with("10.213."), "{name} has no pod address: {r}");
        }
    }
    // `web` publishes 8080: it answers at its host's address, from the root namespace.
    let web_host = rows["web.1"]["host"]
        .as_str()
        .expect("web.1 host")
        .to_string();
    let url = format!("http://{}:8080/", lab.address(&web_host));
    let mut body = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "2", &url])
            .output()
            .expect("runs wget");
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        body,
        compose_fleet::lab::images::HTTPD_INDEX,
        "the published port {url}"
    );
    // `up` waits for health only where someone depends on it: `cache`. `web` turns healthy soon.
    assert_eq!(
        rows["cache.1"]["health"], "healthy",
        "{:?}",
        rows["cache.1"]
    );
    // Two web replicas publish 8080: on two hosts.
    assert_ne!(rows["web.1"]["host"], rows["web.2"]["host"]);
    assert_eq!(
        rows["web.1"]["ports"][0]
            .as_str()
            .map(|p| p.ends_with(":8080->80/tcp")),
        Some(true)
    );
    let pids = |rows: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        rows.iter()
            .map(|(k, r)| (k.clone(), r["pid"].clone()))
            .collect()
    };
    let before = pids(&rows);

    // 2. Nothing changed: nothing is sent, nothing restarts, and each host is asked once (its
    // `Status`: no lock, no service map it already holds).
    let out = cli(&lab, project, &[], &["up", "--json"]);
    assert!(out.status.success(), "second up failed: {}", describe(&out));
    let mut evs = events(&out);
    let requests = evs.pop().expect("events");
    assert_eq!(requests["event"], "requests", "{requests}");
    let per_host = requests["hosts"].as_object().expect("hosts").clone();
    assert_eq!(per_host.len(), 3, "{requests}");
    assert!(
        per_host.values().all(|n| n.as_u64() == Some(1)),
        "one request per host for a no-op up: {requests}"
    );
    assert_eq!(changed_pods(&evs), Vec::<String>::new());
    let done = evs.last().expect("events");
    assert_eq!(
        (done["event"].as_str(), done["unchanged"].as_u64()),
        (Some("done"), Some(6)),
        "{done}"
    );
    let running = |p: &BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        p.iter()
            .filter(|(k, _)| !k.starts_with("migrate"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(running(&pids(&ps(&lab, project))), running(&before));

    // 3. `api`'s environment changes: only its two pods are replaced.
    let out = cli(&lab, project, &[("API_MODE", "b")], &["up", "--json"]);
    assert!(
        out.status.success(),
        "up with API_MODE=b failed: {}",
        describe(&out)
    );
    assert_eq!(
        changed_pods(&events(&out)),
        ["replace api-1", "replace api-2"]
    );
    let after = pids(&ps(&lab, project));
    for (k, pid) in running(&before) {
        if k.starts_with("api") {
            assert_ne!(after[&k], pid, "{k} was not replaced");
        } else {
            assert_eq!(after[&k], pid, "{k} was touched");
        }
    }

    // Plain output when stderr is not a terminal: timestamped lines, no escape codes.
    let out = cli(&lab, project, &[("API_MODE", "b")], &["up", "--dry-run"]);
    assert!(out.status.success(), "dry run failed: {}", describe(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&format!("{}: no changes", lab.host(1))) && plan.contains("0 changes"),
        "{plan}"
    );
    let out = cli(&lab, project, &[("API_MODE", "c")], &["up", "--dry-run"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("replace  api-1") && plan.contains("2 changes"),
        "{plan}"
    );
    assert!(ps(&lab, project).values().all(|r| r["state"] != "created"));
    // For CI: 0 without changes, 2 with.
    let code = |mode: &str| {
        cli(
            &lab,
            project,
            &[("API_MODE", mode)],
            &["plan", "--detailed-exitcode"],
        )
        .status
        .code()
    };
    assert_eq!((code("b"), code("c")), (Some(0), Some(2)));

    // 4. `down`: no pod of the project on any host.
    let out = cli(&lab, project, &[], &["down"]);
    assert!(out.status.success(), "down failed: {}", describe(&out));
    assert!(ps(&lab, project).is_empty());

    // 5. A job exiting 1 fails `up` with exit 1, naming it, and what waits for it never starts.
    let out = cli(&lab, "jobsfail", &[("MIGRATE_EXIT", "1")], &["up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr.contains("`migrate` replica 1") && stderr.contains("exited with code 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("migration done"),
        "the job's last log lines are shown: {stderr}"
    );
    // Plain lines carry a `HH:MM:SS.mmm` timestamp.
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.len() > 12 && first.as_bytes()[2] == b':' && first.as_bytes()[8] == b'.',
        "{first}"
    );
    let rows = ps(&lab, "jobsfail");
    assert!(
        !rows.keys().any(|k| k.starts_with("api")),
        "api started: {rows:?}"
    );
    let out = cli(&lab, "jobsfail", &[], &["down"]);
    assert!(out.status.success(), "down failed: {}", describe(&out));
}

/// A dependent on another host reaches its dependency by name while `up` runs: the service map
/// goes to every host as pods start, so the dependent's health check (a fetch of `http://db/`)
/// passes and the health-gated `up` succeeds.
#[test]
fn a_dependent_on_another_host_reaches_its_dependency_by_name_during_up() {
    let Some(lab) = Lab::up(
        "a_dependent_on_another_host_reaches_its_dependency_by_name_during_up",
        2,
    ) else {
        return;
    };
    let hosts = lab.host_names();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/discovery/compose.yaml");
    let run = |args: &[&str]| {
        lab.cli()
            .arg("-f")
            .arg(&fixture)
            .args(args)
            .env("REGISTRY", lab.registry())
            .env("H1", &hosts[0])
            .env("H2", &hosts[1])
            .output()
            .expect("runs the CLI")
    };
    let out = run(&["up"]);
    assert!(out.status.success(), "up: {}", describe(&out));
    let out = run(&["ps", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ps JSON");
    let api = rows
        .iter()
        .find(|r| r["service"] == "api")
        .expect("an api row");
    assert_eq!(
        (api["host"].as_str(), api["health"].as_str()),
        (Some(hosts[1].as_str()), Some("healthy")),
        "{rows:?}"
    );
    let out = run(&["down"]);
    assert!(out.status.success(), "down: {}", describe(&out));
}

/// `depends_on: {restart: true}` through the real executor: replacing `db` on one host restarts
/// `api` on another once the new `db` is healthy; `side`, which depends on `db` without
/// `restart: true`, keeps its process.
#[test]
fn a_replaced_dependency_restarts_its_restart_true_dependents_on_other_hosts_only() {
    let Some(lab) = Lab::up(
        "a_replaced_dependency_restarts_its_restart_true_dependents_on_other_hosts_only",
        2,
    ) else {
        return;
    };
    let hosts = lab.host_names();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/up/restart-true.yaml");
    let run = |version: &str, args: &[&str]| {
        lab.cli()
            .arg("-f")
            .arg(&fixture)
            .args(args)
            .env("REGISTRY", lab.registry())
            .env("H1", &hosts[0])
            .env("H2", &hosts[1])
            .env("DB_VERSION", version)
            .output()
            .expect("runs the CLI")
    };
    let pids = |version: &str| -> BTreeMap<String, Value> {
        let out = run(version, &["ps", "--format", "json"]);
        assert!(out.status.success(), "ps: {}", describe(&out));
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ps JSON");
        rows.iter()
            .map(|r| {
                assert_eq!(r["state"], "running", "{r}");
                (
                    r["service"].as_str().unwrap_or("?").to_string(),
                    r["pid"].clone(),
                )
            })
            .collect()
    };
    let out = run("1", &["up", "--json"]);
    assert!(out.status.success(), "up: {}", describe(&out));
    let before = pids("1");
    assert_eq!(before.len(), 3, "{before:?}");

    let out = run("2", &["up", "--json"]);
    assert!(
        out.status.success(),
        "up with DB_VERSION=2: {}",
        describe(&out)
    );
    let evs = events(&out);
    assert_eq!(changed_pods(&evs), ["replace db-1", "restart api-1"]);
    let pos = |pred: &dyn Fn(&Value) -> bool| evs.iter().position(pred);
    let replaced = pos(&|e| e["event"] == "replace" && e["pod"] == "db-1").expect("db replaced");
    let healthy = evs
        .iter()
        .enumerate()
        .skip(replaced)
        .find(|(_, e)| e["event"] == "healthy" && e["service"] == "db")
        .map(|(i, _)| i)
        .expect("the new db turned healthy");
    let restarted = pos(&|e| e["event"] == "restart" && e["pod"] == "api-1").expect("restart");
    assert!(
        healthy < restarted,
        "api restarted before the new db was healthy: {evs:?}"
    );
    let after = pids("2");
    assert_ne!(after["db"], before["db"], "db was replaced");
    assert_ne!(after["api"], before["api"], "api (restart: true) restarted");
    assert_eq!(
        after["side"], before["side"],
        "side (no restart: true) kept"
    );

    let out = run("2", &["down"]);
    assert!(out.status.success(), "down: {}", describe(&out));
}
