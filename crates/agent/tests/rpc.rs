//! `agent rpc` against a real daemon it starts itself (state and run dirs in a temp dir, so no root
//! is needed): handshake, noise-free replies, one daemon per host, structured errors, and the
//! protocol's rules (issue 14): `hello` first, nothing served after a version mismatch, a line
//! that does not parse answered without an id and the connection closed, over-long lines refused
//! before they are buffered.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use compose_fleet_proto::{
    ErrorKind, Response, ResponseFrame, MAX_HELLO_LINE_BYTES, MAX_LINE_BYTES, PROTOCOL_VERSION,
};

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
    rpc_bytes(dirs, input.as_bytes())
}

/// As [`rpc`], with any bytes. Writing may fail once the daemon has closed the connection (the
/// point of some tests): the frames written before that are what counts.
fn rpc_bytes(dirs: &Dirs, input: &[u8]) -> Vec<ResponseFrame> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_compose-fleet-agent"))
        .arg("rpc")
        .env("COMPOSE_FLEET_STATE_DIR", dirs.root.join("state"))
        .env("COMPOSE_FLEET_RUN_DIR", dirs.run_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent rpc");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // Written from another thread, so that replies are read while a large input is still going in.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
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

/// The daemon's peak resident memory (VmHWM), in KiB.
fn daemon_peak_kib(dirs: &Dirs) -> u64 {
    let pid = dirs.daemon_pid().expect("a daemon");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The one error a closed connection answered with: (id, kind, message).
fn only_error(replies: &[ResponseFrame]) -> (Option<u64>, ErrorKind, String) {
    match replies {
        [ResponseFrame {
            id,
            err: Some(e),
            ok: None,
            ..
        }] => (*id, e.kind, e.message.clone()),
        other => panic!("expected exactly one error frame, got {other:?}"),
    }
}

const STATUS: &str = "{\"id\":2,\"type\":\"status\",\"project\":null}\n";

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
    assert_eq!(again[0].id, Some(7));
    assert_eq!(dirs.daemon_pid(), Some(first));
    assert!(Path::new(&format!("/proc/{first}")).exists());
}

#[test]
fn after_the_handshake_requests_are_served() {
    let dirs = Dirs::new("served");
    let replies = rpc(&dirs, &format!("{}{STATUS}", hello(0, PROTOCOL_VERSION)));
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(matches!(replies[0].ok, Some(Response::Hello(_))));
    assert_eq!(replies[1].id, Some(2));
    // Served by the supervisor: an (empty) status, not an error.
    assert!(
        matches!(replies[1].ok, Some(Response::Status(_))),
        "{replies:?}"
    );
}

#[test]
fn a_request_before_hello_is_refused_and_the_connection_closed() {
    let dirs = Dirs::new("no-hello");
    let replies = rpc(
        &dirs,
        &format!("{STATUS}{}{STATUS}", hello(0, PROTOCOL_VERSION)),
    );
    let (id, kind, message) = only_error(&replies);
    assert_eq!((id, kind), (Some(2), ErrorKind::Protocol));
    assert!(
        message
            .contains("`status` before `hello`: the first request on a connection must be `hello`"),
        "{message}"
    );
}

#[test]
fn after_a_version_mismatch_nothing_else_is_served() {
    let dirs = Dirs::new("mismatch");
    let input = format!(
        "{}{STATUS}{}",
        hello(1, PROTOCOL_VERSION + 1),
        hello(3, PROTOCOL_VERSION)
    );
    let (id, kind, message) = only_error(&rpc(&dirs, &input));
    assert_eq!((id, kind), (Some(1), ErrorKind::VersionMismatch));
    assert_eq!(
        message,
        format!(
            "the agent speaks protocol {PROTOCOL_VERSION}, the client {}",
            PROTOCOL_VERSION + 1
        )
    );
}

#[test]
fn a_line_that_does_not_parse_is_answered_without_an_id_and_closes_the_connection() {
    let dirs = Dirs::new("garbage");
    for bad in ["not json at all\n", "{\"id\":7,\"type\":\"reboot\"}\n"] {
        for handshake in [true, false] {
            let first = if handshake {
                hello(0, PROTOCOL_VERSION)
            } else {
                String::new()
            };
            let replies = rpc(&dirs, &format!("{first}{bad}{STATUS}"));
            let errors = &replies[usize::from(handshake)..];
            let (id, kind, message) = only_error(errors);
            assert_eq!((id, kind), (None, ErrorKind::Protocol), "{bad}");
            assert!(
                message.starts_with("a request line does not parse: "),
                "{message}"
            );
            // On the wire the frame has no `id` at all (an old client skips it as noise).
            assert!(!errors[0].to_line().contains("\"id\""));
        }
    }
}

#[test]
fn a_line_over_the_bound_is_refused_before_it_is_buffered() {
    let dirs = Dirs::new("long");
    // Before the handshake the bound is small.
    let mut input = vec![b' '; MAX_HELLO_LINE_BYTES + 1];
    input.push(b'\n');
    let (id, kind, message) = only_error(&rpc_bytes(&dirs, &input));
    assert_eq!((id, kind), (None, ErrorKind::Protocol));
    assert_eq!(
        message,
        format!("a line is longer than {MAX_HELLO_LINE_BYTES} bytes before `hello`")
    );
    // After it, a line four times the bound costs the daemon at most the bound.
    let before = daemon_peak_kib(&dirs);
    let mut input = hello(0, PROTOCOL_VERSION).into_bytes();
    input.resize(input.len() + 4 * MAX_LINE_BYTES, b'x');
    let replies = rpc_bytes(&dirs, &input);
    assert!(matches!(replies[0].ok, Some(Response::Hello(_))));
    let (id, kind, message) = only_error(&replies[1..]);
    assert_eq!((id, kind), (None, ErrorKind::Protocol));
    assert_eq!(
        message,
        format!("a line is longer than {MAX_LINE_BYTES} bytes")
    );
    let grown = daemon_peak_kib(&dirs).saturating_sub(before);
    assert!(
        grown < (MAX_LINE_BYTES as u64 / 1024) * 5 / 4,
        "the daemon's peak grew by {grown} KiB for a {} MiB line",
        (4 * MAX_LINE_BYTES) >> 20
    );
}
