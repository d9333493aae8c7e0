//! SSH transport: one multiplexed OpenSSH master per host, bounded fan-out, host-key checking,
//! and the content-addressed agent upload.
//!
//! - [`Transport`] / [`HostSession`]: the small seam the rest of the CLI uses; [`Hosts`] sends
//!   `connection: local` hosts to [`Local`] (child processes here, no SSH, see [`local`]) and the
//!   others to [`OpenSsh`] (system `ssh` through the `openssh` crate: the user's `~/.ssh/config`,
//!   ProxyJump and ssh-agent for free). Handshakes in flight are bounded (sshd's `MaxStartups` drops beyond ~10)
//!   and so are channels per connection (`MaxSessions`).
//! - Host keys are always verified: strict against the inventory's `known_hosts` (else the user's);
//!   `--accept-new-host-keys` records first-seen keys; a changed key is refused before any command
//!   runs on the host.
//! - [`agent`]: the agent binary (located, digested), pushed to
//!   `/var/lib/compose-fleet/bin/agent-<sha256>` only when missing or wrong, and the one-round-trip
//!   `check digest && exec agent rpc` + `Hello`; through `sudo -n` for `become` hosts.
//! - [`facts`]: every host's [`HostFacts`](crate::proto::HostFacts), all hosts in parallel.
//!
//! Nothing here knows about compose, placement or plans.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::inventory::Fleet;

pub mod agent;
pub mod local;
mod session;
pub mod target;

pub use agent::{connect_agent, connect_agent_to, AgentBinary, AgentClient, HostReport, Remote};
pub use local::{Hosts, Local};
pub use session::{key_from_env, OpenSsh, KEY_ENV, KEY_FILE_ENV};
pub use target::SshTarget;

/// How to reach hosts and how long to wait for them.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCP connect + SSH handshake, per host.
    pub connect_timeout: Duration,
    /// One remote command (check, upload, hello), per host.
    pub command_timeout: Duration,
    /// SSH handshakes in flight at once across the fleet.
    pub max_handshakes: usize,
    /// Channels open at once on one connection (sshd's `MaxSessions` is 10).
    pub max_channels: usize,
    /// Trust and record host keys seen for the first time (`StrictHostKeyChecking=accept-new`);
    /// a *changed* key is refused either way.
    pub accept_new_host_keys: bool,
    /// The agent to push instead of the one found next to the CLI or embedded in it.
    pub agent_binary: Option<PathBuf>,
    /// `hosts --pin`: a host without pinned keys is trusted on first use, and the key it
    /// presents is kept for [`OpenSsh::recorded_keys`] (hosts with pinned keys are verified).
    pub record_host_keys: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            max_handshakes: 8,
            max_channels: 8,
            accept_new_host_keys: false,
            agent_binary: None,
            record_host_keys: false,
        }
    }
}

/// Why a host could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No route, connection refused, name not resolved, connection lost.
    Unreachable,
    /// Connect or command took longer than its timeout.
    Timeout,
    /// The server refused our credentials.
    AuthRefused,
    /// The host presented a key different from the recorded one: possible attack, refused.
    HostKeyChanged,
    /// No key recorded for the host and first-seen keys are not accepted.
    HostKeyUnknown,
    /// The agent could not be pushed, started or understood.
    Agent,
    /// `become` is set and sudo wants a password (or is missing): nothing was run.
    Become,
    /// A local problem (the agent binary, the ssh program, a temp dir).
    Local,
    /// The user's input cannot be used (an `--agent-binary` that is too large or not a static
    /// executable): exit 1, not a broken environment.
    Input,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unreachable => "unreachable",
            ErrorClass::Timeout => "timed out",
            ErrorClass::AuthRefused => "authentication refused",
            ErrorClass::HostKeyChanged => "host key changed",
            ErrorClass::HostKeyUnknown => "host key unknown",
            ErrorClass::Agent => "agent failure",
            ErrorClass::Become => "sudo refused",
            ErrorClass::Local => "local error",
            ErrorClass::Input => "bad input",
        }
    }
}

/// A failure on one host: the class, what happened, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshError {
    pub host: String,
    pub class: ErrorClass,
    pub message: String,
    pub hint: Option<String>,
}

impl SshError {
    pub fn new(host: &str, class: ErrorClass, message: impl Into<String>) -> Self {
        SshError {
            host: host.to_string(),
            class,
            message: message.into(),
            hint: None,
        }
    }

    /// `what` on `host` did not finish within `limit`.
    pub fn timed_out(host: &str, what: &str, limit: Duration) -> Self {
        SshError::new(
            host,
            ErrorClass::Timeout,
            format!("{what} did not finish within {}s", limit.as_secs()),
        )
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `class: message` on one line (the `error` field of `hosts --format json`).
    pub fn reason(&self) -> String {
        format!("{}: {}", self.class.as_str(), self.message)
    }
}

impl fmt::Display for SshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host `{}`: {}", self.host, self.reason())?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SshError {}

/// What a remote command returned.
#[derive(Debug, Clone, Default)]
pub struct CommandOutput {
    /// `None` when the remote process was killed by a signal or the connection dropped.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A long-lived remote process (e.g. `agent rpc`): write to its stdin, read its stdout.
pub struct Channel {
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    pub stderr: Pin<Box<dyn AsyncRead + Send>>,
    /// Keeps the remote process and its slot on the connection alive while the channel is used.
    pub(crate) _guard: Box<dyn Send + Sync>,
}

impl Channel {
    /// A channel from its parts (a test transport builds its channels with this). `guard` lives
    /// as long as the channel: the remote process handle, a permit, …
    pub fn from_parts(
        stdin: impl AsyncWrite + Send + 'static,
        stdout: impl AsyncRead + Send + 'static,
        stderr: impl AsyncRead + Send + 'static,
        guard: impl Send + Sync + 'static,
    ) -> Channel {
        Channel {
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            _guard: Box::new(guard),
        }
    }
}

/// Connects to hosts. The real one is [`OpenSsh`]; tests of the deployer may use their own.
pub trait Transport: Send + Sync + 'static {
    type Session: HostSession;
    /// Opens (and authenticates, host key verified) a connection to one host.
    fn connect(
        &self,
        target: &SshTarget,
    ) -> impl Future<Output = Result<Self::Session, SshError>> + Send;
}

/// One connection to one host, shared by many channels (bounded per connection).
pub trait HostSession: Send + Sync + 'static {
    /// Runs a shell command line to completion, feeding it `stdin`.
    fn run(
        &self,
        command: &str,
        stdin: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<CommandOutput, SshError>> + Send;
    /// Starts a shell command line and returns its stdio.
    fn open(&self, command: &str) -> impl Future<Output = Result<Channel, SshError>> + Send;
    /// Closes the connection (and its master process).
    fn close(self) -> impl Future<Output = ()> + Send;
    /// Where agent binaries live on this host (`/var/lib/compose-fleet/bin`; the local host
    /// follows `COMPOSE_FLEET_STATE_DIR`, as its agent does).
    fn agent_dir(&self) -> String {
        agent::REMOTE_BIN_DIR.to_string()
    }
}

/// Counters over a fan-out, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub reachable: usize,
    pub unreachable: usize,
    /// Agent bytes uploaded to all hosts.
    pub uploaded_bytes: u64,
    /// Remote commands (SSH channels) run on all hosts.
    pub commands: u64,
}

impl Totals {
    pub fn of(reports: &BTreeMap<String, Result<HostReport, SshError>>) -> Totals {
        let mut t = Totals::default();
        for r in reports.values() {
            match r {
                Ok(r) => {
                    t.reachable += 1;
                    t.uploaded_bytes += r.uploaded_bytes;
                    t.commands += u64::from(r.commands);
                }
                Err(_) => t.unreachable += 1,
            }
        }
        t
    }

    /// One line with stable `key=value` fields (tests and benchmarks read it).
    pub fn line(&self) -> String {
        format!(
            "hosts: reachable={} unreachable={} uploaded_bytes={} commands={}",
            self.reachable, self.unreachable, self.uploaded_bytes, self.commands
        )
    }
}

/// Every host's facts, all hosts in parallel through `transport`; the agent is pushed where it is
/// missing or wrong. One entry per target, keyed by host name.
pub async fn facts_with<T: Transport>(
    transport: Arc<T>,
    targets: &[SshTarget],
    agent: Arc<AgentBinary>,
    options: &Options,
) -> BTreeMap<String, Result<HostReport, SshError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let transport = transport.clone();
        let agent = agent.clone();
        let target = target.clone();
        let command_timeout = options.command_timeout;
        tasks.spawn(async move {
            let _running = crate::lifetime::activity(format!(
                "waiting for host `{}` ({})",
                target.name,
                target.destination()
            ));
            let result = async {
                let session = transport.connect(&target).await?;
                let report = match Remote::of(&session, &target) {
                    Ok(remote) => {
                        agent::connect_agent_to(&session, &remote, &agent, command_timeout)
                            .await
                            .map(|(_, report)| report)
                    }
                    Err(e) => Err(e),
                };
                session.close().await;
                report
            }
            .await;
            (target.name, result)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, result)) => {
                out.insert(name, result);
            }
            Err(e) => {
                // A panic in one host's task is a bug; the others still report.
                crate::output::error(&format!("bug: a host task failed: {e}"));
            }
        }
    }
    for t in targets {
        out.entry(t.name.clone()).or_insert_with(|| {
            Err(SshError::new(
                &t.name,
                ErrorClass::Local,
                "the host's task failed",
            ))
        });
    }
    out
}

/// Every host's facts over real SSH, by host name (`plan` without `--offline` and `hosts` call
/// this). `Err` only for a local problem (no agent binary, no temp dir).
pub async fn facts(
    fleet: &Fleet,
    options: &Options,
) -> Result<BTreeMap<String, Result<HostReport, SshError>>, SshError> {
    facts_of(&SshTarget::all(fleet), options).await
}

/// [`facts`] for explicit targets.
pub async fn facts_of(
    targets: &[SshTarget],
    options: &Options,
) -> Result<BTreeMap<String, Result<HostReport, SshError>>, SshError> {
    let agent = Arc::new(AgentBinary::locate(options.agent_binary.as_deref())?);
    let transport = Arc::new(Hosts::new(options)?);
    Ok(facts_with(transport, targets, agent, options).await)
}

/// Every host's facts, and the keys the hosts without pinned keys presented (`hosts --pin`:
/// those are trusted on first use; hosts with pinned keys are verified against them).
pub async fn facts_and_keys(
    targets: &[SshTarget],
    options: &Options,
) -> Result<(Facts, BTreeMap<String, Vec<String>>), SshError> {
    let options = Options {
        record_host_keys: true,
        ..options.clone()
    };
    let agent = Arc::new(AgentBinary::locate(options.agent_binary.as_deref())?);
    let transport = Arc::new(OpenSsh::new(&options)?);
    let reports = facts_with(transport.clone(), targets, agent, &options).await;
    let keys = targets
        .iter()
        .filter(|t| t.host_keys.is_empty())
        .map(|t| (t.name.clone(), transport.recorded_keys(t)))
        .collect();
    Ok((reports, keys))
}

/// Every host's answer, by host name.
pub type Facts = BTreeMap<String, Result<HostReport, SshError>>;

/// A runtime for the synchronous CLI commands.
pub fn runtime() -> Result<tokio::runtime::Runtime, SshError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SshError::new("-", ErrorClass::Local, format!("tokio runtime: {e}")))
}

/// [`facts`] for synchronous callers (the CLI commands).
pub fn facts_blocking(
    fleet: &Fleet,
    options: &Options,
) -> Result<BTreeMap<String, Result<HostReport, SshError>>, SshError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SshError::new("-", ErrorClass::Local, format!("tokio runtime: {e}")))?;
    runtime.block_on(facts(fleet, options))
}

#[cfg(test)]
mod tests {
    //! The fan-out and the push-then-retry handshake against a recording fake transport (pure
    //! logic; the real transport is tested on the lab fleet in `tests/it`).

    use std::sync::Mutex;

    use super::*;
    use crate::proto::{HostFacts, Response, ResponseFrame};

    /// Per host: whether the agent is installed; records every command.
    #[derive(Default)]
    struct Fake {
        installed: Mutex<BTreeMap<String, bool>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    struct FakeSession {
        host: String,
        fake: Arc<Fake>,
    }

    impl Transport for Arc<Fake> {
        type Session = FakeSession;
        async fn connect(&self, target: &SshTarget) -> Result<FakeSession, SshError> {
            if target.address == "dead" {
                return Err(SshError::new(
                    &target.name,
                    ErrorClass::Unreachable,
                    "refused",
                ));
            }
            Ok(FakeSession {
                host: target.name.clone(),
                fake: self.clone(),
            })
        }
    }

    impl HostSession for FakeSession {
        async fn run(
            &self,
            command: &str,
            stdin: Option<Vec<u8>>,
        ) -> Result<CommandOutput, SshError> {
            self.fake.log.lock().unwrap().push(format!(
                "{}: run {} bytes",
                self.host,
                stdin.as_ref().map_or(0, Vec::len)
            ));
            assert!(
                command.contains("sha256sum"),
                "uploads verify the digest on the host"
            );
            self.fake
                .installed
                .lock()
                .unwrap()
                .insert(self.host.clone(), true);
            Ok(CommandOutput {
                status: Some(0),
                stdout: b"ok\n".to_vec(),
                stderr: vec![],
            })
        }

        async fn open(&self, command: &str) -> Result<Channel, SshError> {
            self.fake
                .log
                .lock()
                .unwrap()
                .push(format!("{}: open", self.host));
            assert!(command.contains("exec \"$b\" rpc"));
            let installed = self
                .fake
                .installed
                .lock()
                .unwrap()
                .get(&self.host)
                .copied()
                .unwrap_or(false);
            let out = if installed {
                let facts = HostFacts {
                    protocol_version: crate::proto::PROTOCOL_VERSION,
                    agent_version: "0.1.0".into(),
                    arch: "x86_64".into(),
                    cpus: 4,
                    memory: 8 << 30,
                    kernel: "6.1.0".into(),
                    cgroup: "v2".into(),
                    hostname: self.host.clone(),
                    free_disk: 1 << 30,
                    pod_subnet: None,
                    mesh: None,
                    fast_path: None,
                    capabilities: Vec::new(),
                };
                format!(
                    "Welcome to {} (motd)\n{}\n",
                    self.host,
                    ResponseFrame::ok(0, Response::Hello(facts)).to_line()
                )
            } else {
                "compose-fleet: agent missing\n".to_string()
            };
            Ok(Channel::from_parts(
                tokio::io::sink(),
                std::io::Cursor::new(out.into_bytes()),
                tokio::io::empty(),
                (),
            ))
        }

        async fn close(self) {}
    }

    fn target(name: &str, address: &str) -> SshTarget {
        SshTarget {
            name: name.into(),
            address: address.into(),
            user: None,
            port: None,
            identity_file: None,
            known_hosts: None,
            connection: crate::inventory::Connection::Ssh,
            use_become: false,
            become_user: None,
            host_keys: Vec::new(),
        }
    }

    #[tokio::test]
    async fn missing_agents_are_pushed_once_and_dead_hosts_do_not_stop_the_others() {
        let fake = Arc::new(Fake::default());
        fake.installed.lock().unwrap().insert("b".into(), true);
        let agent = Arc::new(AgentBinary::from_bytes(
            std::borrow::Cow::Borrowed(b"agent!"),
            "test".into(),
        ));
        let targets = [
            target("a", "10.0.0.1"),
            target("b", "10.0.0.2"),
            target("c", "dead"),
        ];
        let reports = facts_with(
            Arc::new(fake.clone()),
            &targets,
            agent.clone(),
            &Options::default(),
        )
        .await;

        let a = reports["a"].as_ref().expect("a answers after the push");
        assert_eq!((a.uploaded_bytes, a.commands), (6, 3));
        assert_eq!(a.facts.hostname, "a", "noise before the frame is skipped");
        let b = reports["b"].as_ref().expect("b answers");
        assert_eq!(
            (b.uploaded_bytes, b.commands),
            (0, 1),
            "warm: one command, nothing uploaded"
        );
        assert_eq!(
            reports["c"].as_ref().err().map(|e| e.class),
            Some(ErrorClass::Unreachable)
        );
        let totals = Totals::of(&reports);
        assert_eq!(
            totals.line(),
            "hosts: reachable=2 unreachable=1 uploaded_bytes=6 commands=4"
        );

        // Second run: everything installed, nothing uploaded.
        fake.log.lock().unwrap().clear();
        let again = facts_with(
            Arc::new(fake.clone()),
            &targets[..2],
            agent,
            &Options::default(),
        )
        .await;
        assert_eq!(Totals::of(&again).uploaded_bytes, 0);
        let mut log = fake.log.lock().unwrap().clone();
        log.sort();
        assert_eq!(log, vec!["a: open", "b: open"]);
    }
}
