//! The one pod model seen from outside: `graph --format json` and `plan --format json` name every
//! replica's pod alike on every fixture and example, replicas of one colocation share a host, and
//! a project whose graph is broken is refused by every command that loads it, with the same words.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(compose: &Path, inventory: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-f")
        .arg(compose)
        .arg("-i")
        .arg(inventory)
        .args(args)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_FLEET_INVENTORY")
        .output()
        .expect("run compose-fleet");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every compose project of the repository: each fixture and each example.
fn projects() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs = vec![root.join("tests/fixtures"), root.join("examples")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "compose.yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The project's own inventory, or a roomy one of ours written to `scratch`.
fn inventory_for(compose: &Path, scratch: &Path) -> PathBuf {
    let own = compose.with_file_name("inventory.yaml");
    if own.is_file() {
        return own;
    }
    roomy_inventory(scratch)
}

/// Twelve large hosts, each declaring its capacity.
fn roomy_inventory(scratch: &Path) -> PathBuf {
    let path = scratch.join("inventory.yaml");
    let mut text = String::from("hosts:\n");
    for i in 1..=12 {
        text.push_str(&format!(
            "  h{i}: {{ capacity: {{ cpus: 64, memory: 256GiB }} }}\n"
        ));
    }
    std::fs::write(&path, text).expect("write inventory");
    path
}

#[test]
fn graph_and_plan_agree_on_every_pod_of_every_fixture_and_example() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let projects = projects();
    assert!(projects.len() >= 8, "found only {projects:?}");
    let mut compared = 0;
    for compose in &projects {
        let inventory = inventory_for(compose, scratch.path());
        let graph = run(compose, &inventory, &["graph", "--format", "json"]);
        let plan_args = ["plan", "--offline", "--format", "json"];
        let mut plan = run(compose, &inventory, &plan_args);
        if plan.stdout.is_empty() && graph.code == Some(0) {
            // The project's own inventory does not plan offline (it asks hosts for their
            // capacity): pods do not depend on the hosts, so plan onto ours.
            plan = run(compose, &roomy_inventory(scratch.path()), &plan_args);
        }
        if graph.code != Some(0) {
            // A project the graph rejects is rejected by `plan` too, before placing anything.
            assert_eq!(
                graph.code,
                Some(1),
                "{}: {}",
                compose.display(),
                graph.stderr
            );
            assert_eq!(plan.code, Some(1), "{}: {}", compose.display(), plan.stdout);
            assert!(plan.stdout.is_empty(), "{}", plan.stdout);
            continue;
        }
        if plan.code == Some(1) && plan.stdout.is_empty() && plan.stderr.contains("error:") {
            // Compose accepts it but the fleet cannot run it (`restart: sometimes`, …): `config`
            // and `graph` warn, placement refuses the whole project, so there are no pods to compare.
            continue;
        }
        let g: Value = serde_json::from_str(&graph.stdout).expect("graph JSON");
        let p: Value = serde_json::from_str(&plan.stdout)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", compose.display(), plan.stderr));
        let mut pod_of: BTreeMap<&str, &str> = BTreeMap::new();
        for pod in g["pods"].as_array().expect("pods") {
            let name = pod["name"].as_str().expect("pod name");
            for s in pod["services"].as_array().expect("services") {
                let s = s.as_str().expect("service");
                assert!(pod_of.insert(s, name).is_none(), "{s} in two pods");
            }
        }
        let services: Vec<&str> = g["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            pod_of.keys().copied().collect::<Vec<_>>(),
            services,
            "{}: every service is in exactly one pod",
            compose.display()
        );
        let mut colocation_of: BTreeMap<&str, &str> = BTreeMap::new();
        for c in g["colocations"].as_array().expect("colocations") {
            for pod in c["pods"].as_array().expect("pods") {
                colocation_of.insert(
                    pod.as_str().expect("pod"),
                    c["name"].as_str().expect("name"),
                );
            }
        }
        // (pod or colocation, replica) → host: pods are never split, colocations share a host.
        let mut host_of: BTreeMap<(&str, u64), &str> = BTreeMap::new();
        for a in p["placements"].as_array().expect("placements") {
            let service = a["service"].as_str().expect("service");
            let pod = a["pod"].as_str().expect("pod");
            assert_eq!(
                Some(&pod),
                pod_of.get(service),
                "{}: plan puts `{service}` in pod `{pod}`",
                compose.display()
            );
            let unit = colocation_of.get(pod).copied().unwrap_or(pod);
            let replica = a["replica"].as_u64().expect("replica");
            let host = a["host"].as_str().expect("host");
            let before = host_of.insert((unit, replica), host);
            assert!(
                before.is_none_or(|h| h == host),
                "{}: `{unit}` replica {replica} split over {before:?} and {host}",
                compose.display()
            );
            compared += 1;
        }
    }
    assert!(compared > 20, "only {compared} placements compared");
}

#[test]
fn pods_colocations_and_what_joins_neither() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let compose =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/graph/pods/compose.yaml");
    let inventory = inventory_for(&compose, scratch.path());
    let g = run(&compose, &inventory, &["graph", "--format", "json"]);
    assert_eq!(g.code, Some(0), "{}", g.stderr);
    let v: Value = serde_json::from_str(&g.stdout).expect("JSON");
    assert_eq!(
        v["pods"],
        serde_json::json!([
            {"name": "backup", "services": ["backup"]},
            {"name": "db", "services": ["db"]},
            {"name": "logs", "services": ["logs"]},
            {"name": "shm", "services": ["shm"]},
            {"name": "uploader", "services": ["uploader"]},
            {"name": "uploader2", "services": ["uploader2"]},
            {"name": "web", "services": ["metrics", "web", "web-proxy"]},
        ])
    );
    assert_eq!(
        v["colocations"],
        serde_json::json!([
            {"name": "backup", "pods": ["backup", "db"]},
            {"name": "logs", "pods": ["logs", "web"]},
        ])
    );
    let text = run(&compose, &inventory, &["graph"]);
    assert!(
        text.stdout.ends_with(
            "pod web: metrics, web, web-proxy\nsame host: pods backup, db\nsame host: pods logs, web\n"
        ),
        "{}",
        text.stdout
    );
}

#[test]
fn every_command_that_loads_a_project_refuses_a_broken_graph_with_the_same_words() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/graph");
    for (name, expect) in [
        (
            "cycle",
            "error: dependency cycle: api → db → web → api\n  --> compose.yaml:9:7",
        ),
        (
            "problems",
            "service `web` depends on `apii`, which is not defined",
        ),
        (
            "unknown-netns",
            "error: service `sidecar` shares the network namespace of `nope`, which is not defined",
        ),
    ] {
        let compose = fixtures.join(name).join("compose.yaml");
        let inventory = inventory_for(&compose, scratch.path());
        let graph = run(&compose, &inventory, &["graph"]);
        assert_eq!(graph.code, Some(1), "{name}: {}", graph.stderr);
        assert!(graph.stderr.contains(expect), "{name}: {}", graph.stderr);
        assert!(
            graph
                .stderr
                .contains("error: the dependency graph of project"),
            "{}",
            graph.stderr
        );
        for args in [
            &["config"][..],
            &["config", "--services"],
            &["plan", "--offline"],
            &["plan", "--offline", "--format", "json"],
        ] {
            let other = run(&compose, &inventory, args);
            assert_eq!(other.code, Some(1), "{name} {args:?}: {}", other.stderr);
            assert_eq!(other.stderr, graph.stderr, "{name} {args:?}");
            assert!(other.stdout.is_empty(), "{name} {args:?}: {}", other.stdout);
        }
    }
}
