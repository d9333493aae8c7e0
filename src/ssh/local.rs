//! The local transport: a host with `connection: local` (`ansible_connection: local`) is this
//! machine, and its "remote" commands are `sh -c` child processes here, with no SSH. The agent
//! path is the same as on any host (the check-digest-then-exec script, the verified upload); only
//! the directory follows `COMPOSE_FLEET_STATE_DIR` when it is set, as the agent's state does.
//!
//! [`Hosts`] is the transport the CLI uses: it sends each target to [`OpenSsh`] or [`Local`] by
//! its connection.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::agent::REMOTE_BIN_DIR;
use super::session::OpenSshSession;
use super::{
    Channel, CommandOutput, ErrorClass, HostSession, OpenSsh, Options, SshError, SshTarget,
    Transport,
};
use crate::inventory::Connection;

/// The agent's state directory variable (read by the agent too, see `crates/agent/src/store.rs`).
pub const STATE_DIR_VAR: &str = "COMPOSE_FLEET_STATE_DIR";

/// Runs a local host's commands as child processes of this CLI.
pub struct Local {
    command_timeout: Duration,
    max_channels: usize,
}

impl Local {
    pub fn new(options: &Options) -> Local {
        Local {
            command_timeout: options.command_timeout,
            max_channels: options.max_channels.max(1),
        }
    }
}

impl Transport for Local {
    type Session = LocalSession;

    async fn connect(&self, target: &SshTarget) -> Result<LocalSession, SshError> {
        Ok(LocalSession {
            host: target.name.clone(),
            channels: Arc::new(Semaphore::new(self.max_channels)),
            command_timeout: self.command_timeout,
        })
    }
}

/// This machine, as one host.
pub struct LocalSession {
    host: String,
    channels: Arc<Semaphore>,
    command_timeout: Duration,
}

impl LocalSession {
    fn spawn(&self, command: &str, stdin: Stdio) -> Result<tokio::process::Child, SshError> {
        tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                SshError::new(
                    &self.host,
                    ErrorClass::Local,
                    format!("cannot run /bin/sh on this machine: {e}"),
                )
            })
    }

    fn timeout(&self, what: &str) -> SshError {
        SshError::timed_out(&self.host, what, self.command_timeout)
    }
}

impl HostSession for LocalSession {
    async fn run(&self, command: &str, stdin: Option<Vec<u8>>) -> Result<CommandOutput, SshError> {
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|_| SshError::new(&self.host, ErrorClass::Local, "session closed"))?;
        let mut child = self.spawn(
            command,
            if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            },
        )?;
        let input = child.stdin.take();
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let work = async {
            // As over SSH: feed stdin while draining stdout and stderr. A command that exits
            // without reading all of stdin (refused before the upload) is not an error here.
            let feed = async {
                if let (Some(mut input), Some(data)) = (input, stdin.as_deref()) {
                    let _ = input.write_all(data).await;
                    let _ = input.shutdown().await;
                }
            };
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let read_out = async {
                if let Some(o) = out.as_mut() {
                    let _ = o.read_to_end(&mut stdout).await;
                }
            };
            let read_err = async {
                if let Some(e) = err.as_mut() {
                    let _ = e.read_to_end(&mut stderr).await;
                }
            };
            tokio::join!(feed, read_out, read_err);
            let status = child.wait().await.map_err(|e| {
                SshError::new(
                    &self.host,
                    ErrorClass::Local,
                    format!("waiting for a local command: {e}"),
                )
            })?;
            Ok(CommandOutput {
                status: status.code(),
                stdout,
                stderr,
            })
        };
        tokio::time::timeout(self.command_timeout, work)
            .await
            .map_err(|_| self.timeout("a local command"))?
    }

    async fn open(&self, command: &str) -> Result<Channel, SshError> {
        let permit = self
            .channels
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SshError::new(&self.host, ErrorClass::Local, "session closed"))?;
        let mut child = self.spawn(command, Stdio::piped())?;
        let missing = || SshError::new(&self.host, ErrorClass::Local, "child stdio missing");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        // Dropping the channel closes the agent's stdin, which ends `agent rpc` as a closed SSH
        // channel does; the child is then reaped by tokio.
        Ok(Channel::from_parts(
            Discarding(stdin),
            stdout,
            stderr,
            (child, permit),
        ))
    }

    async fn close(self) {}

    fn agent_dir(&self) -> String {
        local_agent_dir()
    }
}

/// A child's stdin that, like an SSH channel, takes what is written after the child exited (and
/// drops it) instead of failing with `EPIPE`: the check script prints the missing marker and
/// exits before the pipelined `Hello` arrives, and the reader is what hears about it.
struct Discarding<W>(W);

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Discarding<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.0).poll_write(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                std::task::Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_flush(cx) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_shutdown(cx) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Where a local host's agents live: `$COMPOSE_FLEET_STATE_DIR/bin` when the variable is set
/// (the agent started from here inherits it and keeps its state there), else the usual place.
pub fn local_agent_dir() -> String {
    match std::env::var(STATE_DIR_VAR) {
        Ok(dir) if !dir.is_empty() => format!("{}/bin", dir.trim_end_matches('/')),
        _ => REMOTE_BIN_DIR.to_string(),
    }
}

/// The transport of the CLI: SSH for ordinary hosts, child processes for `connection: local`.
pub struct Hosts {
    ssh: OpenSsh,
    local: Local,
}

impl Hosts {
    pub fn new(options: &Options) -> Result<Hosts, SshError> {
        Ok(Hosts {
            ssh: OpenSsh::new(options)?,
            local: Local::new(options),
        })
    }
}

/// A session of [`Hosts`].
pub enum AnySession {
    Ssh(OpenSshSession),
    Local(LocalSession),
}

impl Transport for Hosts {
    type Session = AnySession;

    async fn connect(&self, target: &SshTarget) -> Result<AnySession, SshError> {
        Ok(match target.connection {
            Connection::Ssh => AnySession::Ssh(self.ssh.connect(target).await?),
            Connection::Local => AnySession::Local(self.local.connect(target).await?),
        })
    }
}

impl HostSession for AnySession {
    async fn run(&self, command: &str, stdin: Option<Vec<u8>>) -> Result<CommandOutput, SshError> {
        match self {
            AnySession::Ssh(s) => s.run(command, stdin).await,
            AnySession::Local(s) => s.run(command, stdin).await,
        }
    }

    async fn open(&self, command: &str) -> Result<Channel, SshError> {
        match self {
            AnySession::Ssh(s) => s.open(command).await,
            AnySession::Local(s) => s.open(command).await,
        }
    }

    async fn close(self) {
        match self {
            AnySession::Ssh(s) => s.close().await,
            AnySession::Local(s) => s.close().await,
        }
    }

    fn agent_dir(&self) -> String {
        match self {
            AnySession::Ssh(s) => s.agent_dir(),
            AnySession::Local(s) => s.agent_dir(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> LocalSession {
        LocalSession {
            host: "here".into(),
            channels: Arc::new(Semaphore::new(2)),
            command_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn commands_run_here_with_stdin_and_their_status() {
        let s = session();
        let out = s
            .run("cat; echo err >&2; exit 3", Some(b"hello".to_vec()))
            .await
            .expect("runs");
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
        // Exiting before reading stdin is the command's business, not a transport error.
        let out = s
            .run("exit 4", Some(vec![0u8; 1 << 20]))
            .await
            .expect("runs");
        assert_eq!(out.status, Some(4));
    }

    #[tokio::test]
    async fn a_channel_is_a_child_process_with_its_stdio() {
        let s = session();
        let mut ch = s
            .open("read line; echo \"got $line\"")
            .await
            .expect("opens");
        ch.stdin.write_all(b"ping\n").await.unwrap();
        let mut out = String::new();
        ch.stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "got ping\n");
        // Written after the child is gone: dropped, as an SSH channel would; the reader sees EOF.
        let mut ch = s.open("echo bye").await.expect("opens");
        let mut out = String::new();
        ch.stdout.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "bye\n");
        ch.stdin.write_all(b"late\n").await.expect("no EPIPE");
        ch.stdin.flush().await.expect("no EPIPE");
    }
}
