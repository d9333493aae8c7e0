//! `agent rpc` against a real daemon it starts itself (state and run dirs in a temp dir, so no root
//! is needed): handshake, noise-free replies, one daemon per host, structured errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use compose_fleet_proto::{ErrorKind, Response, ResponseFrame, PROTOCOL_VERSION};

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("cf-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("temp dir");
        Dirs { root }
    }
    fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.run_dir().join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs `agent rpc` with `input` on stdin; returns the reply frames.
fn rpc(dirs: &Dirs, input: &str) -> Vec<ResponseFrame> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_compose-fleet-agent"))
        .arg("rpc")
        .env("COMPOSE_FLEET_STATE_DIR", dirs.root.join("state"))
        .env("COMPOSE_FLEET_RUN_DIR", dirs.run_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent rpc");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "agent rpc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.lines()
        .map(|l| ResponseFrame::parse_line(l).unwrap_or_else(|| panic!("not a frame: {l}")))
        .collect()
}

fn hello(id: u64, version: u32) -> String {
    format!("{{\"id\":{id},\"type\":\"hello\",\"protocol_version\":{version}}}\n")
}

#[test]
fn rpc_starts_one_daemon_that_answers_hello_with_facts() {
    let dirs = Dirs::new("hello");
    let replies = rpc(&dirs, &hello(0, PROTOCOL_VERSION));
    assert_eq!(replies.len(), 1);
    match &replies[0].ok {
        Some(Response::Hello(facts)) => {
            assert_eq!(facts.protocol_version, PROTOCOL_VERSION);
            assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
            assert!(facts.cpus >= 1 && facts.memory > 0);
            assert!(
                ["v1", "v2"].contains(&facts.cgroup.as_str()),
                "{}",
                facts.cgroup
            );
        }
        other => panic!("expected hello facts, got {other:?} / {:?}", replies[0].err),
    }
    let first = dirs.daemon_pid().expect("daemon wrote its pid");
    // A second connection reuses the running daemon.
    let again = rpc(&dirs, &hello(7, PROTOCOL_VERSION));
    assert_eq!(again[0].id, 7);
    assert_eq!(dirs.daemon_pid(), Some(first));
    assert!(Path::new(&format!("/proc/{first}")).exists());
}

#[test]
fn version_mismatch_and_unknown_requests_are_structured_errors() {
    let dirs = Dirs::new("errors");
    let input = format!(
        "{}{}not json at all\n",
        hello(1, PROTOCOL_VERSION + 1),
        "{\"id\":2,\"type\":\"status\",\"project\":null}\n"
    );
    let mut replies = rpc(&dirs, &input);
    replies.sort_by_key(|r| r.id);
    let kinds: Vec<(u64, Option<ErrorKind>)> = replies
        .iter()
        .map(|r| (r.id, r.err.as_ref().map(|e| e.kind)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, Some(ErrorKind::BadRequest)),
            (1, Some(ErrorKind::VersionMismatch)),
            // Served by the supervisor now: an (empty) status, not an error.
            (2, None),
        ]
    );
    assert!(matches!(
        replies[2].ok,
        Some(compose_fleet_agent::proto::Response::Status(_))
    ));
}
