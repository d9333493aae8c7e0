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
//!
//! A host with `become: true` ([`Privilege::Sudo`]) is logged into as an ordinary user, and only
//! two commands run as root, each through `sudo -n` with fixed arguments, so that a `sudoers`
//! rule can name them exactly ([`sudoers_line`]):
//! - `sudo -n -- DIR/agent-<sha256> rpc`, after the digest check (the file is root-owned, 0755);
//! - `sudo -n -- /usr/bin/install -D -o root -g root -m 0755 -t DIR STAGE/agent-<sha256>
//!   STAGE/agent-<sha256>.service`, where STAGE is `$HOME/.compose-fleet`, the user's own space:
//!   the upload lands there, its digest is checked, and `install` copies it into place root-owned
//!   (the digest is checked again before it is ever run).
//!
//! Each script first asks `sudo -n -l` whether its command may run without a password; when not,
//! it prints [`SUDO_REFUSED_MARKER`] and runs nothing, and the host is refused with the
//! `sudoers` line that fixes it.

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

/// What a script run with [`Privilege::Sudo`] prints, followed by ` user=NAME home=DIR` (and
/// ` sudo=missing` without sudo), when sudo would want a password: nothing was run as root.
const SUDO_REFUSED_MARKER: &str = "compose-fleet: sudo refused";

/// What the `rpc` script with [`Privilege::Sudo`] says on stderr (the same fields as
/// [`SUDO_REFUSED_MARKER`]) right before `exec sudo`: if sudo then wants a password after all
/// (`sudo -n -l` passes for a user with any NOPASSWD rule), the refusal still names the fix.
const SUDO_AS_MARKER: &str = "compose-fleet: sudo as";

/// The exit status of an upload refused by sudo (the marker is on stdout).
const SUDO_REFUSED_STATUS: i32 = 4;

/// Where an upload is staged with [`Privilege::Sudo`], under the login user's home.
const STAGE_DIR: &str = ".compose-fleet";

/// The `install` that sudo runs (absolute: sudoers rules name commands by path).
const INSTALL: &str = "/usr/bin/install";

/// How the agent runs on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// As the login user, who is root (the default).
    Root,
    /// As root through `sudo -n`, unless the login user turns out to be root (`become: true`).
    Sudo,
}

impl Privilege {
    /// What `target` asks for: `become: true` means sudo, except when the inventory logs in as
    /// root. Becoming another user than root is refused: the agent needs root.
    pub fn of(target: &super::SshTarget) -> Result<Privilege, SshError> {
        if let Some(user) = target.become_user.as_deref().filter(|u| *u != "root") {
            return Err(SshError::new(
                &target.name,
                ErrorClass::Local,
                format!(
                    "`become_user: {user}` is not supported: the agent runs as root, so it can \
                     create namespaces, mounts and cgroups"
                ),
            )
            .with_hint(
                "remove `become_user`/`ansible_become_user` for this host, or set it to `root`",
            ));
        }
        Ok(
            if target.use_become && target.user.as_deref() != Some("root") {
                Privilege::Sudo
            } else {
                Privilege::Root
            },
        )
    }
}

/// The `sudoers` line that lets `user` (home `home`) run this agent's two commands without a
/// password, for the agent at `dir`/agent-`digest`.
pub fn sudoers_line(user: &str, home: &str, dir: &str, digest: &str) -> String {
    let stage = format!("{}/{STAGE_DIR}", home.trim_end_matches('/'));
    format!(
        "{user} ALL=(root) NOPASSWD: {dir}/agent-{digest} rpc, {INSTALL} -D -o root -g root -m \
         0755 -t {dir} {stage}/agent-{digest} {stage}/agent-{digest}.service"
    )
}

/// The same rule for every agent version (sudo 1.9.10 or later reads regular expressions): what
/// the lab gives its passwordless user.
pub fn sudoers_pattern(user: &str, home: &str, dir: &str) -> String {
    let stage = format!("{}/[.]compose-fleet", home.trim_end_matches('/'));
    let agent = "agent-[0-9a-f]{64}";
    format!(
        "{user} ALL=(root) NOPASSWD: ^{dir}/{agent}$ ^rpc$, {INSTALL} ^-D -o root -g root -m 0755 \
         -t {dir} {stage}/{agent} {stage}/{agent}[.]service$"
    )
}

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
                // The path is the user's input: a device, a missing file or one over the bound is
                // theirs to fix (exit 1).
                let why = match crate::compose::source::TooLarge::of(&e) {
                    Some(_) => format!(
                        "it holds more than {MAX_AGENT_BYTES} bytes, the limit for an agent binary \
                         (an agent is about 4 MB){}",
                        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
                            "; it is not a regular file"
                        } else {
                            ""
                        }
                    ),
                    None => e.to_string(),
                };
                SshError::new(
                    "-",
                    ErrorClass::Input,
                    format!("cannot read the agent binary {}: {why}", path.display()),
                )
                .with_hint("pass the path of a compose-fleet-agent built for the hosts")
            })?;
            if let Some(why) = not_static(&bytes) {
                return Err(SshError::new(
                    "-",
                    ErrorClass::Input,
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
        self.path_in(REMOTE_BIN_DIR)
    }

    /// `DIR/agent-<sha256>`.
    pub fn path_in(&self, dir: &str) -> String {
        format!("{dir}/agent-{}", self.digest)
    }

    /// The shell command that execs the agent's `rpc` mode if, and only if, the file on the host
    /// has our digest; otherwise it prints [`MISSING_MARKER`].
    pub fn rpc_command(&self) -> String {
        self.rpc_command_in(REMOTE_BIN_DIR, Privilege::Root)
    }

    /// [`AgentBinary::rpc_command`] for the agents in `dir`, run with `privilege`.
    pub fn rpc_command_in(&self, dir: &str, privilege: Privilege) -> String {
        let exec = match privilege {
            Privilege::Root => "exec \"$b\" rpc".to_string(),
            // Already root (an inventory that leaves the user to ssh_config): no sudo needed.
            Privilege::Sudo => format!(
                "if [ \"$(id -u)\" = 0 ]; then exec \"$b\" rpc; fi; {check} \
                 if sudo -n -l -- \"$b\" rpc >/dev/null 2>&1; then {who} >&2; exec sudo -n -- \"$b\" rpc; fi; \
                 {refused}; exit 0",
                check = sudo_present(0),
                refused = refused_line(""),
                // Read only when sudo fails after all (see `next_frame`).
                who = refused_line("").replace(SUDO_REFUSED_MARKER, SUDO_AS_MARKER),
            ),
        };
        format!(
            "b={path}; if [ -x \"$b\" ] && [ \"$(sha256sum \"$b\" 2>/dev/null | cut -c1-64)\" = {d} ]; \
             then {exec}; fi; echo '{MISSING_MARKER}'",
            path = shell_quote(&self.path_in(dir)),
            d = self.digest
        )
    }

    /// The shell command that receives the agent on stdin and installs it atomically, after
    /// verifying its digest on the host; the systemd unit is written beside it.
    fn upload_command(&self, dir: &str, privilege: Privilege, unit: &str) -> String {
        let d = &self.digest;
        let unit = shell_quote(unit);
        let dir = shell_quote(dir);
        match privilege {
            Privilege::Root => format!(
                "set -e; umask 022; dir={dir}; mkdir -p \"$dir\"; \
                 tmp=$(mktemp \"$dir/.upload.XXXXXX\"); trap 'rm -f \"$tmp\"' EXIT; \
                 cat > \"$tmp\"; got=$(sha256sum \"$tmp\" | cut -c1-64); \
                 if [ \"$got\" != {d} ]; then echo \"digest mismatch after upload: $got\" >&2; exit 3; fi; \
                 chmod 0755 \"$tmp\"; mv -f \"$tmp\" \"$dir/agent-{d}\"; \
                 printf '%s' {unit} > \"$tmp\"; chmod 0644 \"$tmp\"; mv -f \"$tmp\" \"$dir/agent-{d}.service\"; \
                 echo ok"
            ),
            // Staged in the user's home (never a shared /tmp), checked, then copied into place
            // root-owned by the one `install` command the sudoers rule names. sudo is asked
            // first, before a byte is read: a refusal costs no upload and runs nothing.
            Privilege::Sudo => format!(
                "set -e; umask 077; dir={dir}; stage=\"$HOME/{STAGE_DIR}\"; \
                 set -- -D -o root -g root -m 0755 -t \"$dir\" \"$stage/agent-{d}\" \"$stage/agent-{d}.service\"; \
                 s=; if [ \"$(id -u)\" != 0 ]; then {check} s='sudo -n --'; \
                 sudo -n -l -- {INSTALL} \"$@\" >/dev/null 2>&1 || {{ {refused}; exit {SUDO_REFUSED_STATUS}; }}; fi; \
                 mkdir -p \"$stage\"; trap 'rm -f \"$stage/agent-{d}\" \"$stage/agent-{d}.service\"' EXIT; \
                 cat > \"$stage/agent-{d}\"; got=$(sha256sum \"$stage/agent-{d}\" | cut -c1-64); \
                 if [ \"$got\" != {d} ]; then echo \"digest mismatch after upload: $got\" >&2; exit 3; fi; \
                 printf '%s' {unit} > \"$stage/agent-{d}.service\"; \
                 umask 022; if ! err=$($s {INSTALL} \"$@\" 2>&1); then case \"$err\" in \
                 *'password is required'*) {refused}; exit {SUDO_REFUSED_STATUS};; esac; \
                 echo \"$err\" >&2; exit 1; fi; echo ok",
                check = sudo_present(SUDO_REFUSED_STATUS),
                refused = refused_line(""),
            ),
        }
    }

    /// The systemd unit for this agent, from `templates/agent.service.tera`.
    pub fn systemd_unit(&self) -> Result<String, String> {
        self.systemd_unit_in(REMOTE_BIN_DIR)
    }

    /// [`AgentBinary::systemd_unit`] for the agent in `dir`.
    fn systemd_unit_in(&self, dir: &str) -> Result<String, String> {
        let mut ctx = tera::Context::new();
        ctx.insert("binary", &self.path_in(dir));
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

/// Shell: prints the refusal marker and exits with `status` when there is no sudo at all.
fn sudo_present(status: i32) -> String {
    format!(
        "command -v sudo >/dev/null 2>&1 || {{ {}; exit {status}; }};",
        refused_line(" sudo=missing")
    )
}

/// Shell: prints [`SUDO_REFUSED_MARKER`] with the login user and home (the sudoers line names
/// both), then `extra`.
fn refused_line(extra: &str) -> String {
    format!("echo \"{SUDO_REFUSED_MARKER} user=$(id -un) home=$HOME{extra}\"")
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

/// One host as the agent's functions see it: its name, the directory of agents there, and how
/// the agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub host: String,
    /// Where agent binaries live on the host ([`HostSession::agent_dir`]).
    pub dir: String,
    pub privilege: Privilege,
}

impl Remote {
    /// `target` reached through `session`.
    pub fn of<S: HostSession>(session: &S, target: &super::SshTarget) -> Result<Remote, SshError> {
        Ok(Remote {
            host: target.name.clone(),
            dir: session.agent_dir(),
            privilege: Privilege::of(target)?,
        })
    }

    /// A host logged into as root.
    pub fn root<S: HostSession>(session: &S, host: &str) -> Remote {
        Remote {
            host: host.to_string(),
            dir: session.agent_dir(),
            privilege: Privilege::Root,
        }
    }

    /// The refusal of a host whose sudo wants a password (or is missing), from the marker's
    /// `user=… home=… [sudo=missing]`.
    fn sudo_refused(&self, agent: &AgentBinary, fields: &str) -> SshError {
        let field = |k: &str| {
            fields
                .split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
                .to_string()
        };
        let (user, home) = (field("user"), field("home"));
        let line = sudoers_line(&user, &home, &self.dir, &agent.digest);
        let edit = "visudo -f /etc/sudoers.d/compose-fleet";
        if field("sudo") == "missing" {
            return SshError::new(
                &self.host,
                ErrorClass::Become,
                format!(
                    "`become` is set but sudo is not installed on the host (logged in as `{user}`); \
                     nothing was run"
                ),
            )
            .with_hint(format!(
                "install sudo on the host, then allow the agent with `{edit}`:\n    {line}"
            ));
        }
        SshError::new(
            &self.host,
            ErrorClass::Become,
            format!(
                "sudo wants a password for `{user}` to run the agent as root (`become` runs it \
                 through `sudo -n`, which never prompts); nothing was run"
            ),
        )
        .with_hint(format!(
            "allow `{user}` to run this agent without a password; as root on the host, add this \
             line with `{edit}`:\n    {line}\n  (it names this agent version; the README's \
             \"Non-root users\" section has a rule for every version)"
        ))
    }
}

/// Installs `agent` on a host logged into as root through `session` (upload, verify, chmod,
/// rename). Returns the bytes sent.
pub async fn push<S: HostSession>(
    session: &S,
    host: &str,
    agent: &AgentBinary,
) -> Result<u64, SshError> {
    push_to(session, &Remote::root(session, host), agent).await
}

/// [`push`] to `remote`, through sudo when it says so.
pub async fn push_to<S: HostSession>(
    session: &S,
    remote: &Remote,
    agent: &AgentBinary,
) -> Result<u64, SshError> {
    let host = remote.host.as_str();
    let unit = agent
        .systemd_unit_in(&remote.dir)
        .map_err(|e| SshError::new(host, ErrorClass::Local, e))?;
    let out = session
        .run(
            &agent.upload_command(&remote.dir, remote.privilege, &unit),
            Some(agent.bytes().to_vec()),
        )
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(fields) = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(SUDO_REFUSED_MARKER))
    {
        return Err(remote.sudo_refused(agent, fields));
    }
    if out.status != Some(0) || !stdout.contains("ok") {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let hint = match remote.privilege {
            Privilege::Root => format!(
                "the SSH user must be able to write {} (log in as root, or as a user with sudo \
                 and `become: true`), and the host needs sh, sha256sum and mktemp",
                remote.dir
            ),
            Privilege::Sudo => format!(
                "the upload is staged in the login user's ~/{STAGE_DIR} and installed with \
                 `sudo {INSTALL}`: the home must be writable, and the host needs sh, sha256sum \
                 and install"
            ),
        };
        return Err(SshError::new(
            host,
            ErrorClass::Agent,
            format!(
                "uploading the agent to {} failed (exit {}): {stderr}",
                agent.path_in(&remote.dir),
                out.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "by signal".into()),
            ),
        )
        .with_hint(hint));
    }
    Ok(agent.bytes().len() as u64)
}

/// The handshake with one host logged into as root: run the verified agent (pushing it first
/// when missing or wrong) and return its facts. Warm, this is one channel and one request.
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

/// Opens a channel to the verified agent on a host logged into as root, pushing it first when
/// missing or wrong, and completes the `Hello` handshake on it. The returned client is ready for
/// further requests (ids from 1): a deploy pipelines its requests on this same channel.
pub async fn connect_agent<S: HostSession>(
    session: &S,
    host: &str,
    agent: &AgentBinary,
    timeout: Duration,
) -> Result<(AgentClient, HostReport), SshError> {
    connect_agent_to(session, &Remote::root(session, host), agent, timeout).await
}

/// [`connect_agent`] to `remote`: through sudo when it says so.
pub async fn connect_agent_to<S: HostSession>(
    session: &S,
    remote: &Remote,
    agent: &AgentBinary,
    timeout: Duration,
) -> Result<(AgentClient, HostReport), SshError> {
    let host = remote.host.as_str();
    let mut uploaded_bytes = 0;
    let mut commands = 0;
    for attempt in 0..2 {
        commands += 1;
        let mut client = AgentClient::start_in(session, remote, agent).await?;
        let started = Instant::now();
        let exchange = async {
            let sent = client
                .send(
                    0,
                    Request::Hello {
                        protocol_version: PROTOCOL_VERSION,
                    },
                )
                .await;
            // The check script may have said "missing" (or "sudo refused") and exited before
            // the pipelined Hello arrived, closing the channel under it: what it printed is
            // the answer, not the failed write.
            let reply = client.next_frame().await;
            match (sent, reply) {
                (_, Ok(r @ (Reply::Missing | Reply::SudoRefused(_)))) => Ok(r),
                (Err(e), _) => Err(e),
                (Ok(()), reply) => reply,
            }
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
            Reply::SudoRefused(fields) => return Err(remote.sudo_refused(agent, &fields)),
            Reply::Missing if attempt == 0 => {
                uploaded_bytes += push_to(session, remote, agent).await?;
                commands += 1;
            }
            Reply::Missing => {
                return Err(SshError::new(
                    host,
                    ErrorClass::Agent,
                    format!(
                        "{} is still missing or wrong right after uploading it",
                        agent.path_in(&remote.dir)
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
    /// sudo would want a password (or is missing): nothing ran. The marker's fields.
    SudoRefused(String),
}

/// A channel to `agent rpc` on one host: send requests, read reply frames (noise skipped).
pub struct AgentClient {
    host: String,
    channel: Channel,
    reader: BufReader<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>,
    /// The line being read, kept here so that [`AgentClient::recv`] is cancel-safe (`exec` selects
    /// between it and the user's stdin).
    lines: LineBuffer,
}

impl AgentClient {
    /// Opens a channel running the verified agent's `rpc` mode (or the missing marker) on a
    /// host logged into as root.
    pub async fn start<S: HostSession>(
        session: &S,
        host: &str,
        agent: &AgentBinary,
    ) -> Result<AgentClient, SshError> {
        Self::start_in(session, &Remote::root(session, host), agent).await
    }

    /// [`AgentClient::start`] on `remote`.
    pub async fn start_in<S: HostSession>(
        session: &S,
        remote: &Remote,
        agent: &AgentBinary,
    ) -> Result<AgentClient, SshError> {
        let mut channel = session
            .open(&agent.rpc_command_in(&remote.dir, remote.privilege))
            .await?;
        let stdout = std::mem::replace(&mut channel.stdout, Box::pin(tokio::io::empty()));
        Ok(AgentClient {
            host: remote.host.clone(),
            channel,
            reader: BufReader::new(stdout),
            lines: LineBuffer::new(MAX_LINE_BYTES),
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
            Reply::SudoRefused(_) => Err(SshError::new(
                &self.host,
                ErrorClass::Become,
                "sudo refused to run the agent without a password",
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
                // `sudo -n -l` allowed the command but running it still wants a password (the
                // user has some NOPASSWD rule, not for the agent): sudo's own words say so.
                if stderr.contains("sudo:") && stderr.contains("password is required") {
                    if let Some(fields) = stderr
                        .lines()
                        .find_map(|l| l.trim().strip_prefix(SUDO_AS_MARKER))
                    {
                        return Ok(Reply::SudoRefused(fields.to_string()));
                    }
                }
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
            if let Some(fields) = line.trim().strip_prefix(SUDO_REFUSED_MARKER) {
                return Ok(Reply::SudoRefused(fields.to_string()));
            }
            if let Some(frame) = ResponseFrame::parse_line(&line) {
                return Ok(Reply::Frame(Box::new(frame)));
            }
        }
    }

    /// One line from the agent, bounded by [`MAX_LINE_BYTES`] before it is buffered; `None` at
    /// the end of the channel.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, SshError> {
        let lines = &mut self.lines;
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

    fn target(
        user: Option<&str>,
        use_become: bool,
        become_user: Option<&str>,
    ) -> super::super::SshTarget {
        let mut host = crate::inventory::Host::new("web1", "10.0.0.5");
        host.user = user.map(String::from);
        host.use_become = use_become;
        host.become_user = become_user.map(String::from);
        super::super::SshTarget::from_host(&host, Path::new("/"))
    }

    #[test]
    fn become_means_sudo_unless_the_login_user_is_root_and_only_root_can_be_become() {
        let of = |u, b, bu| Privilege::of(&target(u, b, bu)).map_err(|e| e.to_string());
        assert_eq!(of(Some("deploy"), true, None), Ok(Privilege::Sudo));
        assert_eq!(of(None, true, Some("root")), Ok(Privilege::Sudo));
        assert_eq!(of(Some("root"), true, None), Ok(Privilege::Root));
        assert_eq!(of(Some("deploy"), false, None), Ok(Privilege::Root));
        let e = of(Some("deploy"), true, Some("postgres")).unwrap_err();
        assert!(
            e.contains("`become_user: postgres` is not supported"),
            "{e}"
        );
    }

    #[test]
    fn sudo_scripts_run_only_the_commands_the_sudoers_line_names() {
        let agent = AgentBinary::from_bytes(Cow::Borrowed(b"x"), "test".into());
        let d = &agent.digest;
        let line = sudoers_line("deploy", "/home/deploy/", REMOTE_BIN_DIR, d);
        assert_eq!(
            line,
            format!(
                "deploy ALL=(root) NOPASSWD: /var/lib/compose-fleet/bin/agent-{d} rpc, \
                 /usr/bin/install -D -o root -g root -m 0755 -t /var/lib/compose-fleet/bin \
                 /home/deploy/.compose-fleet/agent-{d} /home/deploy/.compose-fleet/agent-{d}.service"
            )
        );
        // What the scripts hand to sudo, with $HOME and "$@" as the host expands them.
        let rpc = agent.rpc_command_in(REMOTE_BIN_DIR, Privilege::Sudo);
        assert!(rpc.contains("exec sudo -n -- \"$b\" rpc"), "{rpc}");
        assert!(rpc.contains("sudo -n -l -- \"$b\" rpc"), "{rpc}");
        let upload = agent.upload_command(REMOTE_BIN_DIR, Privilege::Sudo, "unit");
        assert!(
            upload.contains(&format!(
                "set -- -D -o root -g root -m 0755 -t \"$dir\" \"$stage/agent-{d}\" \"$stage/agent-{d}.service\""
            )),
            "{upload}"
        );
        assert!(
            upload.contains("err=$($s /usr/bin/install \"$@\" 2>&1)"),
            "{upload}"
        );
        // sudo is asked before the upload is read: a refusal costs no bytes.
        assert!(upload.find("sudo -n -l").unwrap() < upload.find("cat >").unwrap());
        // Root logins keep the one-round-trip script without sudo.
        assert!(!agent.rpc_command().contains("sudo"));
    }

    #[tokio::test]
    async fn sudo_wanting_a_password_after_the_check_is_still_a_refusal_with_the_fix() {
        let stderr = format!(
            "{SUDO_AS_MARKER} user=deploy home=/home/deploy\nsudo: a password is required\n"
        );
        let channel = Channel::from_parts(
            tokio::io::sink(),
            tokio::io::empty(),
            std::io::Cursor::new(stderr.into_bytes()),
            (),
        );
        let mut client = AgentClient {
            host: "web1".into(),
            reader: BufReader::new(Box::pin(tokio::io::empty())),
            channel,
            lines: LineBuffer::new(MAX_LINE_BYTES),
        };
        let reply = client.next_frame().await.expect("a reply");
        let Reply::SudoRefused(fields) = reply else {
            panic!("not a refusal");
        };
        let remote = Remote {
            host: "web1".into(),
            dir: REMOTE_BIN_DIR.into(),
            privilege: Privilege::Sudo,
        };
        let agent = AgentBinary::from_bytes(Cow::Borrowed(b"x"), "test".into());
        let e = remote.sudo_refused(&agent, &fields);
        assert_eq!(e.class, ErrorClass::Become);
        let hint = e.hint.unwrap_or_default();
        assert!(
            hint.contains(&sudoers_line(
                "deploy",
                "/home/deploy",
                REMOTE_BIN_DIR,
                &agent.digest
            )),
            "{hint}"
        );
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
