//! The agent on the hosts: which binary to push ([`AgentBinary`]), pushing it content-addressed,
//! and talking to it ([`AgentClient`], [`hello`]).
//!
//! ```text
//!  CLI                                            host
//!   │ ── sh: sha256(agent-<d>) = d ? exec agent-<d> rpc : echo MISSING ─▶ │  one channel,
//!   │ ── {"id":0,"type":"hello",...} (pipelined, same round trip) ─────▶ │  one round trip
//!   │ ◀── {"id":0,"ok":{"type":"hello",...}}  or  MISSING ─────────────── │
//!   │      MISSING → upload: cat > tmp; sha256(tmp) = d; chmod 0755; mv (atomic) → retry once
//! ```
//! The digest is checked on the host immediately before every `exec`, so a tampered or truncated
//! binary is never run: it is reported missing and replaced.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Channel, ErrorClass, HostSession, SshError};
use crate::compose::source::read_file_limited;
use crate::proto::{
    AgentError, HostFacts, LineBuffer, Request, RequestFrame, Response, ResponseFrame,
    MAX_LINE_BYTES, PROTOCOL_VERSION,
};

/// Where agents live on a host, one file per digest.
pub const REMOTE_BIN_DIR: &str = "/var/lib/compose-fleet/bin";

/// What the check script prints when the verified agent is not there.
const MISSING_MARKER: &str = "compose-fleet: agent missing";

/// The largest agent binary read (`--agent-binary /dev/zero` must not fill memory): the agent's
/// budget is 6 MB; 64 MiB leaves room for an unstripped debug build.
const MAX_AGENT_BYTES: u64 = 64 << 20;

/// The agent embedded in this CLI at build time (see `build.rs`).
static EMBEDDED: &[u8] = include_bytes!(env!("COMPOSE_FLEET_AGENT_EMBEDDED"));

/// The agent binary this CLI pushes, with its digest.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    bytes: Cow<'static, [u8]>,
    /// Lowercase hex sha256 of the bytes.
    pub digest: String,
    /// Where it came from, for messages (`--agent-binary PATH`, a path, or `embedded`).
    pub source: String,
}

impl AgentBinary {
    /// `explicit` (from `--agent-binary`), else a static `compose-fleet-agent` next to this
    /// executable, else the copy embedded at build time.
    pub fn locate(explicit: Option<&Path>) -> Result<AgentBinary, SshError> {
        if let Some(path) = explicit {
            let bytes = read_file_limited(path, MAX_AGENT_BYTES).map_err(|e| {
                let why = match crate::compose::source::TooLarge::of(&e) {
                    Some(_) => format!(
                        "it holds more than {MAX_AGENT_BYTES} bytes (an agent is about 4 MB)"
                    ),
                    None => e.to_string(),
                };
                SshError::new(
                    "-",
                    ErrorClass::Local,
                    format!("cannot read the agent binary {}: {why}", path.display()),
                )
                .with_hint("pass the path of a compose-fleet-agent built for the hosts")
            })?;
            if let Some(why) = not_static(&bytes) {
                return Err(SshError::new(
                    "-",
                    ErrorClass::Local,
                    format!("{} is not a static executable: {why}", path.display()),
                )
                .with_hint("build it with `cargo build -p compose-fleet-agent --profile agent --target x86_64-unknown-linux-musl`"));
            }
            return Ok(Self::from_bytes(
                Cow::Owned(bytes),
                path.display().to_string(),
            ));
        }
        if let Some(beside) = beside_exe() {
            // In a cargo target dir this name is the host build of the agent (dynamically
            // linked): only a static binary is worth pushing.
            if let Some(bytes) = may_be_static(&beside)
                .then(|| read_file_limited(&beside, MAX_AGENT_BYTES).ok())
                .flatten()
            {
                if not_static(&bytes).is_none() {
                    return Ok(Self::from_bytes(
                        Cow::Owned(bytes),
                        beside.display().to_string(),
                    ));
                }
            }
        }
        if EMBEDDED.is_empty() {
            return Err(SshError::new(
                "-",
                ErrorClass::Local,
                "this compose-fleet was built without an agent",
            )
            .with_hint("pass --agent-binary PATH"));
        }
        Ok(Self::from_bytes(Cow::Borrowed(EMBEDDED), "embedded".into()))
    }

    pub fn from_bytes(bytes: Cow<'static, [u8]>, source: String) -> AgentBinary {
        let digest = hex::encode(Sha256::digest(&bytes));
        AgentBinary {
            bytes,
            digest,
            source,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `/var/lib/compose-fleet/bin/agent-<sha256>`.
    pub fn remote_path(&self) -> String {
        format!("{REMOTE_BIN_DIR}/agent-{}", self.digest)
    }

    /// The shell command that execs the agent's `rpc` mode if, and only if, the file on the host
    /// has our digest; otherwise it prints [`MISSING_MARKER`].
    pub fn rpc_command(&self) -> String {
        format!(
            "b={path}; if [ -x \"$b\" ] && [ \"$(sha256sum \"$b\" 2>/dev/null | cut -c1-64)\" = {d} ]; \
             then exec \"$b\" rpc; fi; echo '{MISSING_MARKER}'",
            path = self.remote_path(),
            d = self.digest
        )
    }

    /// The shell command that receives the agent on stdin and installs it atomically, after
    /// verifying its digest on the host; the systemd unit is written beside it.
    fn upload_command(&self, unit: &str) -> String {
        let d = &self.digest;
        format!(
            "set -e; umask 022; dir={REMOTE_BIN_DIR}; mkdir -p \"$dir\"; \
             tmp=$(mktemp \"$dir/.upload.XXXXXX\"); trap 'rm -f \"$tmp\"' EXIT; \
             cat > \"$tmp\"; got=$(sha256sum \"$tmp\" | cut -c1-64); \
             if [ \"$got\" != {d} ]; then echo \"digest mismatch after upload: $got\" >&2; exit 3; fi; \
             chmod 0755 \"$tmp\"; mv -f \"$tmp\" \"$dir/agent-{d}\"; \
             printf '%s' {unit} > \"$tmp\"; chmod 0644 \"$tmp\"; mv -f \"$tmp\" \"$dir/agent-{d}.service\"; \
             echo ok",
            unit = shell_quote(unit)
        )
    }

    /// The systemd unit for this agent, from `templates/agent.service.tera`.
    pub fn systemd_unit(&self) -> Result<String, String> {
        let mut ctx = tera::Context::new();
        ctx.insert("binary", &self.remote_path());
        ctx.insert("digest", &self.digest);
        ctx.insert("version", env!("CARGO_PKG_VERSION"));
        tera::Tera::default()
            .render_str(
                include_str!("../../templates/agent.service.tera"),
                &ctx,
                false,
            )
            .map_err(|e| format!("rendering the agent's systemd unit: {e}"))
    }
}

fn beside_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("compose-fleet-agent"))
}

/// `None` when `elf` is an executable that needs no loader and no shared library; otherwise why.
pub fn not_static(elf: &[u8]) -> Option<String> {
    check_static(elf).err()
}

fn check_static(elf: &[u8]) -> Result<(), String> {
    let truncated = || "truncated ELF headers".to_string();
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(truncated)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(truncated)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            })
            .ok_or_else(truncated)
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph)?;
        let offset = u64_at(ph + 8)? as usize;
        let size = u64_at(ph + 32)? as usize;
        match p_type {
            // PT_INTERP: needs a dynamic loader.
            3 => return Err("it has a program interpreter (PT_INTERP)".into()),
            // PT_DYNAMIC: a static-pie has one for self-relocation, but no DT_NEEDED entry.
            2 => {
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry)? {
                        1 => return Err("it needs shared libraries (DT_NEEDED)".into()),
                        0 => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether the file at `path` is worth reading whole: its first page has no `PT_INTERP` (a
/// dynamically linked debug build can be tens of megabytes).
fn may_be_static(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    let read = std::fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    match read {
        Ok(_) => {
            !matches!(not_static(&head), Some(why) if why.contains("PT_INTERP") || why.contains("not a"))
        }
        Err(_) => false,
    }
}

/// `'…'` for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One host's answer to `Hello`, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReport {
    pub facts: HostFacts,
    /// Time from sending `Hello` to its reply (the last attempt): one round trip through SSH, the
    /// digest check and the agent.
    pub rtt: Duration,
    /// Agent bytes uploaded to this host (0 when it was already there).
    pub uploaded_bytes: u64,
    /// Remote commands (SSH channels) this host needed.
    pub commands: u32,
}

/// Installs `agent` on the host through `session` (upload, verify, chmod, rename). Returns the
/// bytes sent.
pub async fn push<S: HostSession>(
    session: &S,
    host: &str,
    agent: &AgentBinary,
) -> Result<u64, SshError> {
    let unit = agent
        .systemd_unit()
        .map_err(|e| SshError::new(host, ErrorClass::Local, e))?;
    let out = session
        .run(&agent.upload_command(&unit), Some(agent.bytes().to_vec()))
        .await?;
    if out.status != Some(0) || !String::from_utf8_lossy(&out.stdout).contains("ok") {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SshError::new(
            host,
            ErrorClass::Agent,
            format!(
                "uploading the agent to {} failed (exit {}): {stderr}",
                agent.remote_path(),
                out.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "by signal".into()),
            ),
        )
        .with_hint(
            "the SSH user must be able to write /var/lib/compose-fleet (root), and the host needs \
             sh, sha256sum and mktemp",
        ));
    }
    Ok(agent.bytes().len() as u64)
}

/// The handshake with one host: run the verified agent (pushing it first when missing or wrong)
/// and return its facts. Warm, this is one channel and one request.
pub async fn hello<S: HostSession>(
    session: &S,
    host: &str,
    agent: &AgentBinary,
    timeout: Duration,
) -> Result<HostReport, SshError> {
    connect_agent(session, host, agent, timeout)
        .await
        .map(|(_, report)| report)
}

/// Opens a channel to the verified agent, pushing it first when missing or wrong, and completes
/// the `Hello` handshake on it. The returned client is ready for further requests (ids from 1):
/// a deploy pipelines its requests on this same channel.
pub async fn connect_agent<S: HostSession>(
    session: &S,
    host: &str,
    agent: &AgentBinary,
    timeout: Duration,
) -> Result<(AgentClient, HostReport), SshError> {
    let mut uploaded_bytes = 0;
    let mut commands = 0;
    for attempt in 0..2 {
        commands += 1;
        let mut client = AgentClient::start(session, host, agent).await?;
        let started = Instant::now();
        let exchange = async {
            client
                .send(
                    0,
                    Request::Hello {
                        protocol_version: PROTOCOL_VERSION,
                    },
                )
                .await?;
            client.next_frame().await
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                SshError::new(
                    host,
                    ErrorClass::Timeout,
                    format!(
                        "the agent did not answer Hello within {}s",
                        timeout.as_secs()
                    ),
                )
            })??;
        let rtt = started.elapsed();
        match reply {
            Reply::Missing if attempt == 0 => {
                uploaded_bytes += push(session, host, agent).await?;
                commands += 1;
            }
            Reply::Missing => {
                return Err(SshError::new(
                    host,
                    ErrorClass::Agent,
                    format!(
                        "{} is still missing or wrong right after uploading it",
                        agent.remote_path()
                    ),
                ))
            }
            // A daemon of another version answered (replaced between our check and connect):
            // `agent rpc` replaces a daemon that runs another binary, so one retry settles it.
            Reply::Frame(frame)
                if attempt == 0
                    && frame
                        .err
                        .as_ref()
                        .is_some_and(|e| e.kind == crate::proto::ErrorKind::VersionMismatch) => {}
            Reply::Frame(frame) => {
                let facts = hello_facts(host, *frame)?;
                let report = HostReport {
                    facts,
                    rtt,
                    uploaded_bytes,
                    commands,
                };
                return Ok((client, report));
            }
        }
    }
    Err(SshError::new(
        host,
        ErrorClass::Agent,
        "the agent handshake did not complete",
    ))
}

fn hello_facts(host: &str, frame: ResponseFrame) -> Result<HostFacts, SshError> {
    match (frame.ok, frame.err) {
        (Some(Response::Hello(facts)), _) if facts.protocol_version == PROTOCOL_VERSION => {
            Ok(facts)
        }
        (Some(Response::Hello(facts)), _) => Err(SshError::new(
            host,
            ErrorClass::Agent,
            format!(
                "the agent speaks protocol {} (agent {}), this CLI {PROTOCOL_VERSION}",
                facts.protocol_version, facts.agent_version
            ),
        )),
        (_, Some(err)) => Err(agent_error(host, &err)),
        (Some(other), None) => Err(SshError::new(
            host,
            ErrorClass::Agent,
            format!("unexpected reply to Hello: {other:?}"),
        )),
        (None, None) => Err(SshError::new(
            host,
            ErrorClass::Agent,
            "empty reply to Hello",
        )),
    }
}

fn agent_error(host: &str, err: &AgentError) -> SshError {
    SshError::new(
        host,
        ErrorClass::Agent,
        format!("the agent answered: {err}"),
    )
}

/// What came back on an agent channel.
pub enum Reply {
    Frame(Box<ResponseFrame>),
    /// The check script found no verified agent.
    Missing,
}

/// A channel to `agent rpc` on one host: send requests, read reply frames (noise skipped).
pub struct AgentClient {
    host: String,
    channel: Channel,
    reader: BufReader<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
}

impl AgentClient {
    /// Opens a channel running the verified agent's `rpc` mode (or the missing marker).
    pub async fn start<S: HostSession>(
        session: &S,
        host: &str,
        agent: &AgentBinary,
    ) -> Result<AgentClient, SshError> {
        let mut channel = session.open(&agent.rpc_command()).await?;
        let stdout = std::mem::replace(&mut channel.stdout, Box::pin(tokio::io::empty()));
        Ok(AgentClient {
            host: host.to_string(),
            channel,
            reader: BufReader::new(stdout),
        })
    }

    pub async fn send(&mut self, id: u64, request: Request) -> Result<(), SshError> {
        let what = request.name();
        let mut line = RequestFrame { id, request }.to_line();
        // The agent would close the connection on a longer line; say why instead.
        if line.len() > MAX_LINE_BYTES {
            return Err(SshError::new(
                &self.host,
                ErrorClass::Local,
                format!(
                    "the `{what}` request is {} bytes, over the protocol's {MAX_LINE_BYTES}-byte \
                     line bound",
                    line.len()
                ),
            )
            .with_hint("fewer pods per host, or smaller secret and config files, keep it under"));
        }
        line.push('\n');
        let sent = async {
            self.channel.stdin.write_all(line.as_bytes()).await?;
            self.channel.stdin.flush().await
        };
        sent.await.map_err(|e| {
            SshError::new(
                &self.host,
                ErrorClass::Unreachable,
                format!("sending to the agent: {e}"),
            )
        })
    }

    /// The next reply frame (of any id); noise is skipped, the channel closing is an error.
    pub async fn recv(&mut self) -> Result<ResponseFrame, SshError> {
        match self.next_frame().await? {
            // No id: a protocol error about the connection itself, which the agent then closes.
            Reply::Frame(frame) if frame.id.is_none() => Err(SshError::new(
                &self.host,
                ErrorClass::Agent,
                match &frame.err {
                    Some(err) => format!("the agent closed the connection: {err}"),
                    None => "the agent sent a reply without an id".to_string(),
                },
            )),
            Reply::Frame(frame) => Ok(*frame),
            Reply::Missing => Err(SshError::new(
                &self.host,
                ErrorClass::Agent,
                "the verified agent is missing on the host",
            )),
        }
    }

    /// The next reply frame; banners and other noise are skipped.
    pub async fn next_frame(&mut self) -> Result<Reply, SshError> {
        loop {
            let line = self.read_line().await?;
            let Some(line) = line else {
                let mut stderr = String::new();
                let _ = self.channel.stderr.read_to_string(&mut stderr).await;
                return Err(SshError::new(
                    &self.host,
                    ErrorClass::Agent,
                    format!(
                        "the agent closed the channel without replying: {}",
                        stderr.trim()
                    ),
                ));
            };
            let line = String::from_utf8_lossy(&line);
            if line.trim() == MISSING_MARKER {
                return Ok(Reply::Missing);
            }
            if let Some(frame) = ResponseFrame::parse_line(&line) {
                return Ok(Reply::Frame(Box::new(frame)));
            }
        }
    }

    /// One line from the agent, bounded by [`MAX_LINE_BYTES`] before it is buffered; `None` at
    /// the end of the channel.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, SshError> {
        let mut lines = LineBuffer::new(MAX_LINE_BYTES);
        loop {
            let buf = self.reader.fill_buf().await.map_err(|e| {
                SshError::new(
                    &self.host,
                    ErrorClass::Unreachable,
                    format!("reading from the agent: {e}"),
                )
            })?;
            if buf.is_empty() {
                return Ok(lines.finish());
            }
            match lines.feed(buf) {
                Ok((used, line)) => {
                    self.reader.consume(used);
                    if line.is_some() {
                        return Ok(line);
                    }
                }
                Err(e) => {
                    return Err(SshError::new(
                        &self.host,
                        ErrorClass::Agent,
                        format!("the agent sent {e}; the connection is not usable"),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_agent_is_static() {
        let agent = AgentBinary::locate(None).expect("an agent is embedded");
        assert_eq!(not_static(agent.bytes()), None);
        // It is pushed to every host. The budget for everything (registry client, TLS, runtime,
        // pod networking with its WireGuard mesh and DNS) is 8 MB (issue 10; crun is ~1 MB, runc
        // 14 MB, Nomad 84 MB).
        assert!(
            agent.bytes().len() <= 8_000_000,
            "the agent is {} bytes",
            agent.bytes().len()
        );
        assert_eq!(agent.digest.len(), 64);
        assert!(agent.remote_path().ends_with(&agent.digest));
    }

    #[test]
    fn a_dynamic_executable_is_not_static() {
        let sh = std::fs::read("/bin/sh").expect("/bin/sh");
        assert!(not_static(&sh).is_some());
        assert!(not_static(b"#!/bin/sh\n").is_some());
        let agent = AgentBinary::locate(None).expect("agent");
        assert_eq!(
            not_static(&agent.bytes()[..100]).as_deref(),
            Some("truncated ELF headers")
        );
    }

    #[test]
    fn the_unit_runs_the_content_addressed_binary() {
        let agent = AgentBinary::from_bytes(Cow::Borrowed(b"x"), "test".into());
        let unit = agent.systemd_unit().expect("renders");
        assert!(
            unit.contains(&format!(
                "ExecStart={REMOTE_BIN_DIR}/agent-{} daemon",
                agent.digest
            )),
            "{unit}"
        );
        assert!(unit.contains("KillMode=process"));
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
