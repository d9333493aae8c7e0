//! The real [`Transport`]: system OpenSSH through the `openssh` crate's native multiplexing.
//! One master connection per host (control socket in a private 0700 temp dir), every command a
//! channel on it.
//!
//! The master is started here, not by `openssh::SessionBuilder::connect_mux`: the builder puts
//! the destination last with no `--` before it, so an address that starts with `-` would be read
//! by `ssh` as an option. We run `ssh -M -f -N … -- DESTINATION` ourselves ([`master_argv`]: every
//! inventory value is an option's argument or follows `--`) and hand the control socket to
//! `openssh::Session::resume_mux`, which opens channels over the socket without running `ssh`
//! again. [`SshTarget::argv_safe`] still refuses such values first, with a message.
//!
//! The same private directory (removed at exit, on SIGINT/SIGTERM and on `--timeout`, see
//! [`crate::lifetime`]) holds what ssh must read from files: the private key given in
//! `COMPOSE_FLEET_SSH_KEY`/`COMPOSE_FLEET_SSH_KEY_FILE` (0600), and for a host with pinned keys
//! a `known_hosts` of just those keys plus an ssh config that turns the system-wide
//! `known_hosts` off and then includes the user's and the system's own configuration.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openssh::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::lifetime::PrivateDir;

use super::{
    Channel, CommandOutput, ErrorClass, HostSession, Options, SshError, SshTarget, Transport,
};

/// OpenSSH with bounded handshakes; see the module docs.
pub struct OpenSsh {
    control_dir: PrivateDir,
    handshakes: Arc<Semaphore>,
    connect_timeout: Duration,
    command_timeout: Duration,
    max_channels: usize,
    accept_new: bool,
    /// `hosts --pin`: hosts without pinned keys are trusted on first use into a private file.
    record_keys: bool,
    /// The key from `COMPOSE_FLEET_SSH_KEY(_FILE)`, copied into `control_dir`.
    identity: Option<PathBuf>,
    /// The ssh config used for hosts with pinned keys (written on first use).
    pinned_config: OnceLock<Result<PathBuf, String>>,
    /// Names the control socket of each master started.
    next_master: AtomicU64,
}

/// The environment variables that give the private key.
pub const KEY_ENV: &str = "COMPOSE_FLEET_SSH_KEY";
pub const KEY_FILE_ENV: &str = "COMPOSE_FLEET_SSH_KEY_FILE";

/// The private key the environment gives (`COMPOSE_FLEET_SSH_KEY`: its text;
/// `COMPOSE_FLEET_SSH_KEY_FILE`: a path), checked, with line endings made what OpenSSH reads.
/// `Ok(None)` when neither is set. The error never contains the key.
pub fn key_from_env() -> Result<Option<Vec<u8>>, String> {
    let content = std::env::var_os(KEY_ENV);
    let file = std::env::var_os(KEY_FILE_ENV);
    let (text, from) = match (content, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(format!(
                "both {KEY_ENV} and {KEY_FILE_ENV} are set; set only one of them"
            ))
        }
        (Some(text), None) => (text.into_encoded_bytes(), KEY_ENV.to_string()),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            // A private key is a few KiB; a bound keeps a wrong path (a device, a log) harmless.
            let read = std::fs::File::open(&path).and_then(|f| {
                use std::io::Read as _;
                let mut buf = Vec::new();
                f.take(1 << 20).read_to_end(&mut buf).map(|_| buf)
            });
            match read {
                Ok(bytes) => (bytes, format!("{KEY_FILE_ENV} ({})", path.display())),
                Err(e) => {
                    return Err(format!(
                        "cannot read the private key file {} named by {KEY_FILE_ENV}: {e}",
                        path.display()
                    ))
                }
            }
        }
    };
    // CI secrets lose their final newline or gain `\r\n`; OpenSSH wants neither.
    let mut text: Vec<u8> = text.into_iter().filter(|b| *b != b'\r').collect();
    while text.last().is_some_and(|b| b.is_ascii_whitespace()) {
        text.pop();
    }
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    text.drain(..start);
    if text.is_empty() {
        return Err(format!(
            "{from} is set but empty (a CI secret that is not defined for this job?)"
        ));
    }
    if !text.starts_with(b"-----BEGIN ") || !text.windows(9).any(|w| w == b"-----END ") {
        return Err(format!(
            "{from} does not hold a private key in OpenSSH or PEM format (it should start with \
             `-----BEGIN` and end with an `-----END …-----` line); its content is not shown"
        ));
    }
    text.push(b'\n');
    Ok(Some(text))
}

impl OpenSsh {
    pub fn new(options: &Options) -> Result<OpenSsh, SshError> {
        let local = |e: String| SshError::new("-", ErrorClass::Local, e);
        let control_dir = PrivateDir::create("cf-ssh")
            .map_err(|e| local(format!("creating a private temporary directory: {e}")))?;
        let identity =
            match key_from_env().map_err(|e| {
                SshError::new("-", ErrorClass::AuthRefused, e).with_hint(format!(
                    "give the key's text in {KEY_ENV} or its path in {KEY_FILE_ENV}"
                ))
            })? {
                Some(key) => Some(control_dir.write("id", &key).map_err(|e| {
                    local(format!("writing the private key to a private file: {e}"))
                })?),
                None => None,
            };
        Ok(OpenSsh {
            control_dir,
            handshakes: Arc::new(Semaphore::new(options.max_handshakes.max(1))),
            connect_timeout: options.connect_timeout,
            command_timeout: options.command_timeout,
            max_channels: options.max_channels.max(1),
            accept_new: options.accept_new_host_keys,
            record_keys: options.record_host_keys,
            identity,
            pinned_config: OnceLock::new(),
            next_master: AtomicU64::new(0),
        })
    }

    /// The keys ssh recorded for an unpinned host in `hosts --pin` mode (`TYPE BASE64`).
    pub fn recorded_keys(&self, target: &SshTarget) -> Vec<String> {
        let path = self.control_dir.path().join(file_name("seen", target));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut keys = Vec::new();
        for line in text.lines() {
            // `HOSTS TYPE BASE64` (HOSTS hashed or not): the key is the last two fields.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with('#') || line.starts_with('@') || fields.len() < 3 {
                continue;
            }
            if let Ok(k) = crate::inventory::parse_host_key(&fields[fields.len() - 2..].join(" ")) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    /// The ssh config for pinned or recorded keys: no system-wide `known_hosts`, no key updates
    /// from the server; then the user's and the system's own settings (ssh keeps the first
    /// value it reads, so these two lines win over anything included after them).
    fn pinned_config(&self) -> Result<&Path, SshError> {
        let made = self.pinned_config.get_or_init(|| {
            let text = "# compose-fleet: host keys come only from the UserKnownHostsFile given on \
                        the command line\n\
                        GlobalKnownHostsFile /dev/null\n\
                        UpdateHostKeys no\n\
                        Include ~/.ssh/config\n\
                        Include /etc/ssh/ssh_config\n";
            self.control_dir
                .write("config", text.as_bytes())
                .map_err(|e| format!("writing a private ssh config: {e}"))
        });
        made.as_deref()
            .map_err(|e| SshError::new("-", ErrorClass::Local, e.clone()))
    }

    /// A file in the private directory, replaced if it exists (a reconnect writes it again).
    fn private_file(&self, name: &str, content: &str) -> Result<PathBuf, SshError> {
        let path = self.control_dir.path().join(name);
        let _ = std::fs::remove_file(&path);
        self.control_dir
            .write(name, content.as_bytes())
            .map_err(|e| SshError::new("-", ErrorClass::Local, format!("writing {name}: {e}")))
    }

    /// The arguments of the `ssh` that becomes `target`'s master connection, control socket
    /// `ctl`, log `log`. Every value from the inventory is the argument of an option (`-l`, `-p`,
    /// `-i`, `-o Name=value`) or the one operand after `--`: none can be read as an option.
    fn master_argv(
        &self,
        target: &SshTarget,
        ctl: &Path,
        log: &Path,
    ) -> Result<Vec<OsString>, SshError> {
        // Which host keys ssh checks against, and how strictly: pinned keys alone and strictly;
        // under `hosts --pin` an empty private file that ssh fills with what the host presents;
        // else the inventory's (or the user's) known_hosts.
        let (strict, known_hosts, config) = if !target.host_keys.is_empty() {
            // One private file per host with only its pinned keys, under the pattern `*`: it
            // is read for this host alone, so whatever name ssh looks the key up by (the
            // address, `[address]:port`, a HostKeyAlias, the IP) matches. Strict always.
            let mut text = String::new();
            for key in &target.host_keys {
                text.push_str(&format!("* {key}\n"));
            }
            let file = self.private_file(&file_name("pinned", target), &text)?;
            ("yes", Some(file), Some(self.pinned_config()?.to_path_buf()))
        } else if self.record_keys {
            let file = self.private_file(&file_name("seen", target), "")?;
            (
                "accept-new",
                Some(file),
                Some(self.pinned_config()?.to_path_buf()),
            )
        } else {
            let strict = if self.accept_new { "accept-new" } else { "yes" };
            (strict, target.known_hosts.clone(), None)
        };
        let mut argv: Vec<OsString> = Vec::new();
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| argv.push(a.as_ref().to_os_string());
        arg(&"-E");
        arg(&log);
        arg(&"-S");
        arg(&ctl);
        // Master, fork once authenticated, no remote command.
        arg(&"-M");
        arg(&"-f");
        arg(&"-N");
        for option in [
            // A safety net: if we die without closing, the master exits on its own.
            "ControlPersist=60s".to_string(),
            "BatchMode=yes".to_string(),
            format!("StrictHostKeyChecking={strict}"),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "ServerAliveInterval=5".to_string(),
        ] {
            arg(&"-o");
            arg(&option);
        }
        if let Some(port) = target.port {
            arg(&"-p");
            arg(&port.to_string());
        }
        if let Some(user) = &target.user {
            arg(&"-l");
            arg(user);
        }
        // The environment's key is this run's choice: it wins over the inventory's.
        if let Some(key) = self.identity.as_ref().or(target.identity_file.as_ref()) {
            // Only that key.
            arg(&"-o");
            arg(&"IdentitiesOnly=yes");
            arg(&"-i");
            arg(key);
        }
        if let Some(kh) = &known_hosts {
            let mut option = OsString::from("UserKnownHostsFile=");
            option.push(kh);
            arg(&"-o");
            arg(&option);
        }
        if let Some(config) = &config {
            arg(&"-F");
            arg(config);
        }
        arg(&"--");
        arg(&target.address);
        Ok(argv)
    }

    /// Starts `target`'s master connection; the control socket's path, or ssh's error output.
    async fn launch_master(&self, target: &SshTarget) -> Result<PathBuf, String> {
        // Unix socket paths are limited to ~108 bytes: short names in the short directory.
        let n = self.next_master.fetch_add(1, Ordering::Relaxed);
        let ctl = self.control_dir.path().join(format!("m{n}"));
        let log = self.control_dir.path().join(format!("m{n}.log"));
        let argv = self
            .master_argv(target, &ctl, &log)
            .map_err(|e| e.message)?;
        let status = tokio::process::Command::new("ssh")
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // A handshake cut off by our timeout must not go on in the background.
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        if status.success() {
            return Ok(ctl);
        }
        // What ssh said, bounded: a log is a few lines, never worth more than 64 KiB.
        let text = read_prefix(&log, 64 << 10)
            .unwrap_or_else(|e| format!("ssh exited with {status} and its log is unreadable: {e}"));
        let _ = std::fs::remove_file(&log);
        Err(if text.trim().is_empty() {
            format!("ssh exited with {status}")
        } else {
            text
        })
    }
}

/// At most `max` bytes of the file at `path`, as text.
fn read_prefix(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Ends a master connection when the last user of it (the session and its channels) is gone:
/// a session resumed from a control socket does not end its master on drop by itself.
struct Master {
    ctl: PathBuf,
}

impl Drop for Master {
    fn drop(&mut self) {
        exit_master(&self.ctl);
    }
}

/// Asks the master listening on `ctl` to exit (`ssh -O exit`), if the socket is still there.
fn exit_master(ctl: &Path) {
    if !ctl.exists() {
        return;
    }
    // The host operand is required by ssh's syntax and unused with `-S`.
    let _ = std::process::Command::new("ssh")
        .arg("-S")
        .arg(ctl)
        .args(["-O", "exit", "--", "none"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// A private file's name for a host: its inventory name may hold anything, a digest does not.
fn file_name(kind: &str, target: &SshTarget) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(target.name.as_bytes());
    format!("{kind}-{}", &hex::encode(digest)[..16])
}

impl Transport for OpenSsh {
    type Session = OpenSshSession;

    async fn connect(&self, target: &SshTarget) -> Result<OpenSshSession, SshError> {
        // `--` keeps the destination an operand (see the module docs); a value that starts
        // with `-` is still refused first, with a message that says where it came from.
        target.argv_safe()?;
        let _permit = self
            .handshakes
            .acquire()
            .await
            .map_err(|_| SshError::new(&target.name, ErrorClass::Local, "transport closed"))?;
        // ssh's ConnectTimeout covers TCP and the banner; this also bounds key exchange and auth
        // against a host that accepts and then hangs.
        let limit = self.connect_timeout + Duration::from_secs(5);
        let connected = tokio::time::timeout(limit, self.launch_master(target)).await;
        let ctl = match connected {
            Ok(Ok(ctl)) => ctl,
            Ok(Err(log)) => return Err(classify_connect(target, &log)),
            Err(_) => {
                return Err(SshError::new(
                    &target.name,
                    ErrorClass::Timeout,
                    format!(
                        "no SSH session with {} within {}s",
                        target.destination(),
                        limit.as_secs()
                    ),
                ))
            }
        };
        let master = Arc::new(Master { ctl: ctl.clone() });
        let session = openssh::Session::resume_mux(ctl.into_boxed_path(), None);
        Ok(OpenSshSession {
            host: target.name.clone(),
            session: Arc::new(session),
            master,
            channels: Arc::new(Semaphore::new(self.max_channels)),
            command_timeout: self.command_timeout,
        })
    }
}

/// One host's master connection.
pub struct OpenSshSession {
    host: String,
    session: Arc<openssh::Session>,
    /// Shared with every open channel: the master ends when the last of them is dropped.
    master: Arc<Master>,
    channels: Arc<Semaphore>,
    command_timeout: Duration,
}

impl OpenSshSession {
    fn remote_err(&self, what: &str, e: openssh::Error) -> SshError {
        let class = match e {
            openssh::Error::Disconnected | openssh::Error::RemoteProcessTerminated => {
                ErrorClass::Unreachable
            }
            _ => ErrorClass::Agent,
        };
        SshError::new(&self.host, class, format!("{what}: {}", chain(&e)))
    }

    fn timeout(&self, what: &str) -> SshError {
        SshError::timed_out(&self.host, what, self.command_timeout)
    }
}

impl HostSession for OpenSshSession {
    async fn run(&self, command: &str, stdin: Option<Vec<u8>>) -> Result<CommandOutput, SshError> {
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|_| SshError::new(&self.host, ErrorClass::Local, "session closed"))?;
        let work = async {
            let mut child = openssh::Session::to_raw_command(self.session.clone(), command)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .await
                .map_err(|e| self.remote_err("starting a remote command", e))?;
            let mut out = child.stdout().take();
            let mut err = child.stderr().take();
            let input = child.stdin().take();
            // Feed stdin while draining stdout/stderr, so a chatty command never blocks on a full
            // pipe while we block on its stdin.
            let feed = async {
                if let (Some(mut input), Some(data)) = (input, stdin.as_deref()) {
                    input.write_all(data).await?;
                    input.shutdown().await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let read_out = async {
                if let Some(o) = out.as_mut() {
                    o.read_to_end(&mut stdout).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let read_err = async {
                if let Some(e) = err.as_mut() {
                    e.read_to_end(&mut stderr).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let (fed, r1, r2) = tokio::join!(feed, read_out, read_err);
            let io_err = fed.err().or(r1.err()).or(r2.err());
            let status = match child.wait().await {
                Ok(s) => s.code(),
                Err(openssh::Error::RemoteProcessTerminated) => None,
                Err(e) => return Err(self.remote_err("waiting for a remote command", e)),
            };
            if let (Some(e), None | Some(0)) = (io_err, status) {
                return Err(SshError::new(
                    &self.host,
                    ErrorClass::Unreachable,
                    format!("talking to a remote command: {e}"),
                ));
            }
            Ok(CommandOutput {
                status,
                stdout,
                stderr,
            })
        };
        tokio::time::timeout(self.command_timeout, work)
            .await
            .map_err(|_| self.timeout("a remote command"))?
    }

    async fn open(&self, command: &str) -> Result<Channel, SshError> {
        let permit = self
            .channels
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SshError::new(&self.host, ErrorClass::Local, "session closed"))?;
        let mut cmd = openssh::Session::to_raw_command(self.session.clone(), command);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = tokio::time::timeout(self.command_timeout, cmd.spawn())
            .await
            .map_err(|_| self.timeout("opening a channel"))?
            .map_err(|e| self.remote_err("starting a remote command", e))?;
        let missing = || SshError::new(&self.host, ErrorClass::Local, "remote stdio missing");
        let stdin = child.stdin().take().ok_or_else(missing)?;
        let stdout = child.stdout().take().ok_or_else(missing)?;
        let stderr = child.stderr().take().ok_or_else(missing)?;
        Ok(Channel {
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            _guard: Box::new((child, permit, self.master.clone())),
        })
    }

    async fn close(self) {
        // Channels still open keep their own reference; the master goes when the last one does
        // (or after ControlPersist's idle time).
        if let Ok(session) = Arc::try_unwrap(self.session) {
            let _ = session.close().await;
        }
    }
}

/// Turns ssh's error output into a class and a hint that says what to do.
fn classify_connect(target: &SshTarget, text: &str) -> SshError {
    let lower = text.to_lowercase();
    let known_hosts = target
        .known_hosts
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "~/.ssh/known_hosts".into());
    let key_name = match target.port {
        Some(p) if p != 22 => format!("[{}]:{p}", target.address),
        _ => target.address.clone(),
    };
    let summary = last_meaningful_line(text);
    let key_changed = lower.contains("remote host identification has changed")
        || lower.contains("host key for") && lower.contains("has changed");
    let key_unknown = lower.contains("host key verification failed")
        || lower.contains("no ") && lower.contains("host key is known");
    if !target.host_keys.is_empty() && (key_changed || key_unknown) {
        return SshError::new(
            &target.name,
            ErrorClass::HostKeyChanged,
            format!(
                "{} presented a host key that is not among the {} pinned for it in the \
                 inventory; refused, nothing was run on it",
                target.destination(),
                target.host_keys.len()
            ),
        )
        .with_hint(
            "this can mean someone is intercepting the connection. If the host was reinstalled \
             or its key rotated on purpose, check the new key (e.g. `ssh-keygen -lf \
             /etc/ssh/ssh_host_ed25519_key.pub` on its console), remove the old `host_key` from \
             the inventory and run `compose-fleet hosts --pin`",
        );
    }
    if key_changed {
        return SshError::new(
            &target.name,
            ErrorClass::HostKeyChanged,
            format!(
                "{} presented a host key different from the one recorded in {known_hosts}; \
                 refused, nothing was run on it",
                target.destination()
            ),
        )
        .with_hint(format!(
            "this can mean someone is intercepting the connection. If the host was reinstalled \
             or its key rotated on purpose, remove the old key with `ssh-keygen -R {key_name} -f \
             {known_hosts}` and run again with --accept-new-host-keys"
        ));
    }
    if key_unknown {
        return SshError::new(
            &target.name,
            ErrorClass::HostKeyUnknown,
            format!("no host key for {} in {known_hosts}", target.destination()),
        )
        .with_hint(format!(
            "check the host's key fingerprint and add it to {known_hosts} (e.g. `ssh-keyscan {}`), \
             pin it in the inventory (`host_key:`, which `compose-fleet hosts --pin` records), \
             or run with --accept-new-host-keys to trust and record first-seen keys",
            match target.port {
                Some(p) => format!("-p {p} {}", target.address),
                None => target.address.clone(),
            }
        ));
    }
    if lower.contains("permission denied") || lower.contains("too many authentication failures") {
        return SshError::new(&target.name, ErrorClass::AuthRefused, summary).with_hint(
            "check this host's user and identity_file in the inventory (or your ssh-agent and \
             ~/.ssh/config)",
        );
    }
    if lower.contains("timed out") || lower.contains("timeout") {
        return SshError::new(&target.name, ErrorClass::Timeout, summary)
            .with_hint("check that the host is up and that its address and port are right");
    }
    SshError::new(&target.name, ErrorClass::Unreachable, summary)
        .with_hint("check that the host is up, sshd runs, and its address and port are right")
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// ssh's last non-banner line, which is the actual error.
fn last_meaningful_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with("Warning: Permanently"))
        .unwrap_or(text)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SshTarget {
        SshTarget {
            name: "web1".into(),
            address: "10.0.0.5".into(),
            user: Some("root".into()),
            port: Some(2222),
            identity_file: None,
            known_hosts: Some(PathBuf::from("/lab/known_hosts")),
            connection: crate::inventory::Connection::Ssh,
            use_become: false,
            become_user: None,
            host_keys: Vec::new(),
        }
    }

    fn connect_error(log: &str) -> SshError {
        classify_connect(&target(), log)
    }

    /// Issue 14: "pass `--` to `ssh` regardless". A target built around the inventory checks,
    /// with every field starting with `-`, still gives an argv where each value is an option's
    /// argument or the operand after `--`.
    #[test]
    fn master_argv_keeps_every_inventory_value_out_of_option_position() {
        let ssh = OpenSsh::new(&Options::default()).expect("a control dir");
        let hostile = SshTarget {
            name: "h".into(),
            address: "-oProxyCommand=touch /tmp/pwned".into(),
            user: Some("-oUser=x".into()),
            port: Some(2222),
            identity_file: Some(PathBuf::from("-i/etc/shadow")),
            known_hosts: Some(PathBuf::from("-F/dev/null")),
            connection: crate::inventory::Connection::Ssh,
            use_become: false,
            become_user: None,
            host_keys: Vec::new(),
        };
        let argv = ssh
            .master_argv(&hostile, Path::new("/c/m0"), Path::new("/c/m0.log"))
            .expect("argv");
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dashdash = argv.iter().position(|a| a == "--").expect("a `--`");
        assert_eq!(dashdash, argv.len() - 2, "{argv:?}");
        assert_eq!(argv[dashdash + 1], hostile.address);
        // Before `--`, every word is an option or the argument of the option just before it.
        let takes_value = ["-E", "-S", "-o", "-p", "-l", "-i", "-F"];
        let mut i = 0;
        while i < dashdash {
            let word = &argv[i];
            assert!(word.starts_with('-'), "{word} at {i}: {argv:?}");
            i += if takes_value.contains(&word.as_str()) {
                2
            } else {
                1
            };
        }
        assert_eq!(i, dashdash, "{argv:?}");
        for value in ["-oUser=x", "-i/etc/shadow"] {
            let at = argv.iter().position(|a| a == value).expect(value);
            assert!(takes_value.contains(&argv[at - 1].as_str()), "{argv:?}");
        }
        assert!(argv.contains(&"UserKnownHostsFile=-F/dev/null".to_string()));
        // And the check before connecting refuses the target anyway, naming the value.
        let e = hostile.argv_safe().expect_err("refused");
        assert!(
            e.message
                .starts_with("refusing to pass the address `-oProxyCommand=touch /tmp/pwned`"),
            "{e}"
        );
    }

    #[test]
    fn changed_host_key_is_named_with_the_fix() {
        let e = connect_error(
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
             @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
             Host key verification failed.",
        );
        assert_eq!(e.class, ErrorClass::HostKeyChanged);
        assert_eq!(e.host, "web1");
        let hint = e.hint.unwrap_or_default();
        assert!(
            hint.contains("ssh-keygen -R [10.0.0.5]:2222 -f /lab/known_hosts"),
            "{hint}"
        );
    }

    #[test]
    fn other_failures_are_classified() {
        assert_eq!(
            connect_error("No ED25519 host key is known for 10.0.0.5 and you have requested strict checking.\nHost key verification failed.").class,
            ErrorClass::HostKeyUnknown
        );
        assert_eq!(
            connect_error("root@10.0.0.5: Permission denied (publickey).").class,
            ErrorClass::AuthRefused
        );
        assert_eq!(
            connect_error("ssh: connect to host 10.0.0.5 port 2222: Connection timed out").class,
            ErrorClass::Timeout
        );
        let refused = connect_error("ssh: connect to host 10.0.0.5 port 2222: Connection refused");
        assert_eq!(refused.class, ErrorClass::Unreachable);
        assert!(refused.message.contains("Connection refused"));
    }
}
