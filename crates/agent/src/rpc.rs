//! `agent rpc`: what the CLI runs over SSH. It bridges the SSH channel (stdin/stdout, JSON lines)
//! to the daemon's unix socket, first making sure the daemon that answers is *this* binary:
//! - no daemon → start one: through systemd where systemd is PID 1 (with the unit the CLI rendered
//!   and uploaded next to the binary), otherwise detached (`setsid`, stdio to a log file);
//! - a daemon running another binary (an older agent) → stop it and start this one, so the version
//!   the CLI verified by digest is the version that answers.
//!
//! Pods survive a daemon restart: their processes are held by per-container shims.
//!
//! The bridge copies bytes and enforces nothing itself: the daemon applies the protocol's rules
//! (`proto::ServerConnection`) and closes the connection when one is broken; the bridge then ends.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::store::Paths;

/// The systemd unit's name; its file is rendered by the CLI and uploaded as `<binary>.service`.
pub const UNIT_NAME: &str = "compose-fleet-agent.service";

/// How long to wait for a freshly started daemon to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Bridges stdin/stdout to the daemon until the client closes the channel.
pub async fn run(paths: Paths) -> io::Result<()> {
    let stream = connect_or_start(&paths).await?;
    let (mut from_daemon, mut to_daemon) = stream.into_split();
    let upstream = async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_daemon).await;
        // The client is done sending: let the daemon finish the replies, then close.
        let _ = to_daemon.shutdown().await;
        // Keep this half alive; the bridge ends when the daemon closes its side.
        std::future::pending::<()>().await;
    };
    let downstream = async move {
        let mut stdout = tokio::io::stdout();
        let copied = tokio::io::copy(&mut from_daemon, &mut stdout).await;
        let _ = stdout.flush().await;
        match copied {
            // The daemon closes a connection that broke the protocol's rules while the client may
            // still be sending; the kernel then reports a reset instead of the end of the stream,
            // after every byte the daemon wrote (its error frame) has been copied.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            other => other.map(|_| ()),
        }
    };
    tokio::select! {
        _ = upstream => Ok(()),
        done = downstream => done,
    }
}

/// Connects to the daemon running this binary, (re)starting it when needed.
async fn connect_or_start(paths: &Paths) -> io::Result<UnixStream> {
    let me = std::env::current_exe()?;
    if let Some(pid) = running_daemon(paths) {
        if daemon_exe(pid).as_deref() == Some(me.as_path()) {
            if let Ok(stream) = UnixStream::connect(paths.socket()).await {
                return Ok(stream);
            }
        } else {
            stop_daemon(pid).await;
        }
    }
    start_daemon(paths, &me)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_err = None;
    while Instant::now() < deadline {
        match UnixStream::connect(paths.socket()).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the agent daemon did not listen on {} within {}s ({}); see {}",
            paths.socket().display(),
            START_TIMEOUT.as_secs(),
            last_err.map(|e| e.to_string()).unwrap_or_default(),
            paths.log_dir().join("agent.log").display()
        ),
    ))
}

/// The pid of the live daemon, from its pid file.
fn running_daemon(paths: &Paths) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(paths.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(pid)
}

/// The executable a process runs (`… (deleted)` when its file was replaced, which never matches).
fn daemon_exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Asks a daemon of another binary to stop, and waits until its lock is released.
async fn stop_daemon(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Starts `me daemon`: via systemd when it runs and the CLI uploaded a unit, otherwise detached.
/// A second daemon started concurrently exits at once (it cannot take the lock), so racing
/// `agent rpc` processes are harmless.
fn start_daemon(paths: &Paths, me: &Path) -> io::Result<()> {
    let unit = PathBuf::from(format!("{}.service", me.display()));
    if systemd_runs() && unit.is_file() {
        let target = Path::new("/etc/systemd/system").join(UNIT_NAME);
        let content = std::fs::read(&unit)?;
        crate::store::write_atomic(&target, &content, 0o644)?;
        for args in [
            &["daemon-reload"][..],
            &["enable", UNIT_NAME][..],
            &["restart", UNIT_NAME][..],
        ] {
            let status = std::process::Command::new("systemctl")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "systemctl {} failed ({status})",
                    args.join(" ")
                )));
            }
        }
        return Ok(());
    }
    let log_dir = paths.log_dir();
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("agent.log"))?;
    let mut cmd = std::process::Command::new(me);
    cmd.arg("daemon")
        // Do not pin the SSH user's home (or whatever mount it is on) for the daemon's lifetime.
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from the SSH session so that
    // the session's end (SIGHUP to its process group) does not stop it.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
    }
    cmd.spawn()?;
    Ok(())
}
