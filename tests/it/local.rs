//! `connection: local` (`ansible_connection: local`): the host is the machine the CLI runs on, and
//! its agent runs as a child process, without SSH. The CLI runs inside lab host 1 (its network,
//! mount and UTS namespaces, so its own `/var/lib/compose-fleet` and `/run`: the machine running
//! the tests is not touched), with host 1 as the local host and host 2 over SSH: `hosts`, `up`,
//! `ps` and `down` work on both, and host 1's sshd never saw a login; with
//! `COMPOSE_FLEET_STATE_DIR`/`_RUN_DIR` set, the local agent lives and keeps its state there.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::support::{self, describe, Lab};

/// Where a file in host 1's `/tmp/cf-local` is, seen from here.
fn host_tmp(lab: &Lab, host: &str) -> PathBuf {
    lab.dir().join("hosts").join(host).join("tmp/cf-local")
}

/// `compose-fleet -i /tmp/cf-local/inventory.yaml -f /tmp/cf-local/compose.yaml ARGS…`, run
/// inside `host`.
fn cli_in(lab: &Lab, host: &str, args: &[&str]) -> Output {
    cli_in_env(lab, host, args, &[])
}

/// The CLI's path as `host` sees it. A lab host has its own `/tmp` and `/home`: a checkout under
/// either (a CI workspace, a clone in `/tmp`) is not visible there, so the binary is copied into
/// the host's `/tmp/cf-local` (once; it embeds its agent, so the copy behaves the same).
fn cli_seen_from(lab: &Lab, host: &str) -> String {
    let bin = support::bin();
    let hidden = ["/tmp", "/home"].iter().any(|d| bin.starts_with(d));
    if !hidden {
        return bin.display().to_string();
    }
    let copy = host_tmp(lab, host).join("compose-fleet");
    if !copy.exists() {
        std::fs::create_dir_all(host_tmp(lab, host)).expect("host tmp");
        std::fs::copy(&bin, &copy).expect("copy the CLI into the host's /tmp");
    }
    "/tmp/cf-local/compose-fleet".into()
}

/// [`cli_in`] with environment variables.
fn cli_in_env(lab: &Lab, host: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut argv: Vec<String> = vec![
        cli_seen_from(lab, host),
        "-i".into(),
        "/tmp/cf-local/inventory.yaml".into(),
        "-f".into(),
        "/tmp/cf-local/compose.yaml".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    lab.faults()
        .exec(host, &argv)
        .expect("exec in the host")
        .env_remove("COMPOSE_FLEET_STATE_DIR")
        .env_remove("COMPOSE_FLEET_RUN_DIR")
        .envs(env.iter().copied())
        .output()
        .expect("runs the CLI")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn a_local_host_runs_its_agent_without_ssh_beside_an_ssh_host() {
    let Some(lab) = Lab::up("local_connection", 2) else {
        return;
    };
    let (h1, h2) = (lab.host(1), lab.host(2));
    let tmp = host_tmp(&lab, &h1);
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["id_ed25519", "known_hosts"] {
        std::fs::copy(lab.dir().join(f), tmp.join(f)).unwrap();
    }
    // Host 1 is `here`; its address is still its own (the other host routes pods through it).
    write(
        &tmp.join("inventory.yaml"),
        &format!(
            "defaults: {{ user: root, identity_file: /tmp/cf-local/id_ed25519, known_hosts: /tmp/cf-local/known_hosts }}\n\
             registries: {{ \"{reg}\": {{ insecure: true }} }}\n\
             hosts:\n\
             \x20 here: {{ address: {a1}, connection: local }}\n\
             \x20 {h2}: {{ address: {a2} }}\n",
            reg = lab.registry(),
            a1 = lab.address(&h1),
            a2 = lab.address(&h2),
        ),
    );
    let service = |name: &str, on: &str| {
        format!(
            "  {name}:\n    image: {}\n    command: [\"sh\", \"-c\", \"while true; do sleep 5; done\"]\n    stop_grace_period: 1s\n    deploy:\n      placement:\n        constraints: [\"node.hostname == {on}\"]\n",
            lab.shell_image()
        )
    };
    write(
        &tmp.join("compose.yaml"),
        &format!(
            "name: localapp\nservices:\n{}{}",
            service("near", "here"),
            service("far", &h2)
        ),
    );

    let out = cli_in(&lab, &h1, &["hosts", "--format", "json"]);
    assert!(out.status.success(), "hosts failed: {}", describe(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let here = rows.iter().find(|r| r["name"] == "here").expect("here");
    assert_eq!(here["reachable"], true, "{here}");
    assert!(here["agent_version"].is_string(), "{here}");

    let out = cli_in(&lab, &h1, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let out = cli_in(&lab, &h1, &["ps", "--format", "json"]);
    assert!(out.status.success(), "ps failed: {}", describe(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut placed: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["service"].as_str().unwrap_or("?").to_string(),
                r["host"].as_str().unwrap_or("?").to_string(),
                r["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            ("far".to_string(), h2.clone(), "running".to_string()),
            (
                "near".to_string(),
                "here".to_string(),
                "running".to_string()
            ),
        ]
    );
    // The local agent was installed in host 1's own state directory, the same way as over SSH.
    let bin = lab.dir().join("hosts").join(&h1).join("state/bin");
    assert!(
        std::fs::read_dir(&bin)
            .map(|d| d
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("agent-")))
            .unwrap_or(false),
        "no agent in {}",
        bin.display()
    );

    let out = cli_in(&lab, &h1, &["down"]);
    assert!(out.status.success(), "down failed: {}", describe(&out));
    let out = cli_in(&lab, &h1, &["ps", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(rows.is_empty(), "{rows:?}");

    // Nothing logged into host 1: the local host was never reached over SSH.
    let log = std::fs::read_to_string(lab.dir().join(format!("hosts/{h1}/run/sshd.log")))
        .unwrap_or_default();
    assert!(!log.contains("Accepted publickey"), "{log}");
    let log = std::fs::read_to_string(lab.dir().join(format!("hosts/{h2}/run/sshd.log")))
        .unwrap_or_default();
    assert!(log.contains("Accepted publickey for root"), "{log}");

    // With COMPOSE_FLEET_STATE_DIR (and _RUN_DIR), the local agent is installed and keeps its
    // state there, as the agent itself reads them: a local host that touches nothing else.
    let out = cli_in_env(
        &lab,
        &h1,
        &["hosts", "--format", "json"],
        &[
            ("COMPOSE_FLEET_STATE_DIR", "/tmp/cf-local/state"),
            ("COMPOSE_FLEET_RUN_DIR", "/tmp/cf-local/run"),
        ],
    );
    assert!(out.status.success(), "hosts failed: {}", describe(&out));
    let private = |rest: &str| tmp.join(rest);
    let agents: Vec<String> = std::fs::read_dir(private("state/bin"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(agents.iter().any(|a| a.starts_with("agent-")), "{agents:?}");
    assert!(private("run/agent.sock").exists(), "no daemon socket there");
}
