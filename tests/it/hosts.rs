//! `compose-fleet hosts` on a lab fleet: facts from every host, the agent pushed once and verified
//! by digest, a dead host named with its reason, a changed host key refused before any command.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use compose_fleet::ssh::AgentBinary;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::transport::TestLab;

/// Runs `compose-fleet -i INVENTORY hosts ARGS…`, killing it if it hangs (a hang is the bug).
fn hosts(lab: &TestLab, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(lab.lab().inventory())
        .arg("hosts")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run compose-fleet hosts");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`compose-fleet hosts` hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn json_rows(out: &Output) -> Vec<Value> {
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    rows.as_array().expect("a list").clone()
}

/// The `key=value` totals line `hosts` prints on stderr.
fn total(out: &Output, key: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("hosts: "))
        .unwrap_or_else(|| panic!("no totals line in: {stderr}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in `{line}`"))
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name}"))
}

#[test]
fn hosts_reports_every_lab_host_and_pushes_the_agent_only_when_missing_or_wrong() {
    let Some(lab) = TestLab::up("hosts_reports_every_lab_host", 3) else {
        return;
    };
    let agent = AgentBinary::locate(None).expect("agent");
    let size = agent.bytes().len() as u64;
    let installed = format!("bin/agent-{}", agent.digest);

    // Cold: the agent is pushed to every host, every host answers with its facts.
    let cold = hosts(&lab, &["--format", "json"]);
    assert!(
        cold.status.success(),
        "{}",
        String::from_utf8_lossy(&cold.stderr)
    );
    let rows = json_rows(&cold);
    assert_eq!(rows.len(), 3);
    for (i, r) in rows.iter().enumerate() {
        let keys: Vec<&str> = r
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut expected = vec![
            "name",
            "address",
            "reachable",
            "error",
            "agent_version",
            "arch",
            "cpus",
            "memory",
            "kernel",
            "cgroup",
            "rtt_ms",
            "pod_subnet",
            "fast_path",
            "peers",
        ];
        expected.sort_unstable();
        let mut keys = keys.clone();
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(r["name"], lab.host(i + 1));
        assert_eq!(r["address"], lab.address(&lab.host(i + 1)));
        assert_eq!(r["reachable"], true);
        assert_eq!(r["error"], Value::Null);
        assert_eq!(r["agent_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["arch"], std::env::consts::ARCH);
        assert!(r["cpus"].as_u64().unwrap_or(0) >= 1);
        assert!(r["memory"].as_u64().unwrap_or(0) > 0);
        assert!(
            ["v1", "v2"].contains(&r["cgroup"].as_str().unwrap_or("")),
            "{r}"
        );
        assert!(r["rtt_ms"].as_f64().is_some());
        let bin = lab.host_path(&lab.host(i + 1), "state", &installed);
        assert_eq!(
            sha256_file(&bin),
            agent.digest,
            "{} on {}",
            bin.display(),
            lab.host(i + 1)
        );
    }
    assert_eq!(total(&cold, "uploaded_bytes"), 3 * size);

    // Warm: nothing uploaded, one remote command per host.
    let warm = hosts(&lab, &[]);
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    assert_eq!(total(&warm, "uploaded_bytes"), 0);
    assert_eq!(total(&warm, "commands"), 3);
    let table = String::from_utf8_lossy(&warm.stdout);
    assert_eq!(
        table.lines().filter(|l| l.contains(" ok ")).count(),
        3,
        "{table}"
    );

    // Tampered on host 2: a binary with the right name but other content is replaced, never run.
    let bin = lab.host_path(&lab.host(2), "state", &installed);
    std::fs::remove_file(&bin).expect("remove the agent");
    std::fs::write(&bin, "#!/bin/sh\ntouch /tmp/tampered-agent-ran\n").expect("tamper");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let after = hosts(&lab, &["--format", "json"]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(
        json_rows(&after)
            .iter()
            .filter(|r| r["reachable"] == true)
            .count(),
        3
    );
    assert_eq!(
        total(&after, "uploaded_bytes"),
        size,
        "only host 2 gets a fresh copy"
    );
    assert_eq!(sha256_file(&bin), agent.digest);
    assert!(
        !lab.host_path(&lab.host(2), "tmp", "tampered-agent-ran")
            .exists(),
        "the tampered agent was executed"
    );
}

#[test]
fn a_dead_host_is_named_with_its_reason_and_the_others_report() {
    let Some(lab) = TestLab::up("a_dead_host_is_named", 3) else {
        return;
    };
    lab.lab().kill_sshd(&lab.host(2)).expect("kill sshd");
    lab.lab().cut_off(&lab.host(3)).expect("cut off");
    let out = hosts(&lab, &["--format", "json", "--connect-timeout", "3"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_rows(&out);
    assert_eq!(row(&rows, &lab.host(1))["reachable"], true);
    let dead = row(&rows, &lab.host(2));
    assert_eq!(dead["reachable"], false);
    let reason = dead["error"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("unreachable:") && reason.contains("refused"),
        "{reason}"
    );
    assert_eq!(dead["agent_version"], Value::Null);
    let cut = row(&rows, &lab.host(3));
    assert!(
        cut["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("timed out:")
            || cut["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("unreachable:"),
        "{cut}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("host `{}`", lab.host(2))) && stderr.contains("hint:"),
        "{stderr}"
    );
    assert_eq!(total(&out, "reachable"), 1);
    assert_eq!(total(&out, "unreachable"), 2);
}

#[test]
fn unknown_and_changed_host_keys_are_refused_before_any_command_runs() {
    let Some(lab) = TestLab::up("a_changed_host_key_is_refused", 1) else {
        return;
    };
    // sshd runs /etc/ssh/sshrc at the start of every session, before the command: the marker
    // proves whether anything ran. Its output is also noise on the channel the reader skips.
    let sshrc = "printf '%s\\n' 'echo \"Welcome to lab-1 (motd noise)\"; touch /tmp/session-ran' > /etc/ssh/sshrc";
    let marker = lab.host_path(&lab.host(1), "tmp", "session-ran");
    lab.sh(&lab.host(1), sshrc);

    // Unknown key: refused by default; --accept-new-host-keys records it, then strict works.
    let known_hosts = lab.lab().known_hosts();
    let recorded = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    std::fs::write(&known_hosts, "").expect("forget the host keys");
    let unknown = hosts(&lab, &["--format", "json"]);
    assert_eq!(unknown.status.code(), Some(1));
    let reason = row(&json_rows(&unknown), &lab.host(1))["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.starts_with("host key unknown:"), "{reason}");
    assert!(
        !marker.exists(),
        "a command ran on a host with an unknown key"
    );
    let accepted = hosts(&lab, &["--accept-new-host-keys"]);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let learned = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    assert!(
        !learned.trim().is_empty(),
        "the first-seen key was not recorded"
    );
    std::fs::write(&known_hosts, recorded).expect("restore known_hosts");

    let first = hosts(&lab, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(marker.exists(), "the marker must show a session ran");
    std::fs::remove_file(&marker).expect("reset the marker");

    lab.lab()
        .change_host_key(&lab.host(1))
        .expect("new host key");
    lab.sh(&lab.host(1), sshrc);
    for args in [&[][..], &["--accept-new-host-keys"][..]] {
        let out = hosts(&lab, &[args, &["--format", "json"]].concat());
        assert_eq!(out.status.code(), Some(1));
        let rows = json_rows(&out);
        let reason = row(&rows, &lab.host(1))["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(reason.starts_with("host key changed:"), "{reason}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let fix = format!(
            "ssh-keygen -R {} -f {}",
            lab.address(&lab.host(1)),
            lab.lab().known_hosts().display()
        );
        assert!(stderr.contains(&fix), "{stderr}");
        assert!(
            !marker.exists(),
            "a command ran on a host whose key changed ({args:?})"
        );
    }
}
