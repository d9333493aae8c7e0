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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssh::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{
    Channel, CommandOutput, ErrorClass, HostSession, Options, SshError, SshTarget, Transport,
};

/// OpenSSH with bounded handshakes; see the module docs.
pub struct OpenSsh {
    control_dir: ControlDir,
    handshakes: Arc<Semaphore>,
    connect_timeout: Duration,
    command_timeout: Duration,
    max_channels: usize,
    accept_new: bool,
    /// Names the control socket of each master started.
    next_master: AtomicU64,
}

impl OpenSsh {
    pub fn new(options: &Options) -> Result<OpenSsh, SshError> {
        Ok(OpenSsh {
            control_dir: ControlDir::create()
                .map_err(|e| SshError::new("-", ErrorClass::Local, e))?,
            handshakes: Arc::new(Semaphore::new(options.max_handshakes.max(1))),
            connect_timeout: options.connect_timeout,
            command_timeout: options.command_timeout,
            max_channels: options.max_channels.max(1),
            accept_new: options.accept_new_host_keys,
            next_master: AtomicU64::new(0),
        })
    }

    /// The arguments of the `ssh` that becomes `target`'s master connection, control socket
    /// `ctl`, log `log`. Every value from the inventory is the argument of an option (`-l`, `-p`,
    /// `-i`, `-o Name=value`) or the one operand after `--`: none can be read as an option.
    fn master_argv(&self, target: &SshTarget, ctl: &Path, log: &Path) -> Vec<OsString> {
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
            format!(
                "StrictHostKeyChecking={}",
                if self.accept_new { "accept-new" } else { "yes" }
            ),
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
        if let Some(key) = &target.identity_file {
            // Only that key, as the inventory says.
            arg(&"-o");
            arg(&"IdentitiesOnly=yes");
            arg(&"-i");
            arg(key);
        }
        if let Some(kh) = &target.known_hosts {
            let mut option = OsString::from("UserKnownHostsFile=");
            option.push(kh);
            arg(&"-o");
            arg(&option);
        }
        arg(&"--");
        arg(&target.address);
        argv
    }

    /// Starts `target`'s master connection; the control socket's path, or ssh's error output.
    async fn launch_master(&self, target: &SshTarget) -> Result<PathBuf, String> {
        // Unix socket paths are limited to ~108 bytes: short names in the short directory.
        let n = self.next_master.fetch_add(1, Ordering::Relaxed);
        let ctl = self.control_dir.0.join(format!("m{n}"));
        let log = self.control_dir.0.join(format!("m{n}.log"));
        let status = tokio::process::Command::new("ssh")
            .args(self.master_argv(target, &ctl, &log))
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
        SshError::new(
            &self.host,
            ErrorClass::Timeout,
            format!(
                "{what} did not finish within {}s",
                self.command_timeout.as_secs()
            ),
        )
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
    if lower.contains("remote host identification has changed")
        || lower.contains("host key for") && lower.contains("has changed")
    {
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
    if lower.contains("host key verification failed")
        || lower.contains("no ") && lower.contains("host key is known")
    {
        return SshError::new(
            &target.name,
            ErrorClass::HostKeyUnknown,
            format!("no host key for {} in {known_hosts}", target.destination()),
        )
        .with_hint(format!(
            "check the host's key fingerprint and add it to {known_hosts} (e.g. `ssh-keyscan {}`), \
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

/// A private (0700) directory for control sockets, removed on drop.
struct ControlDir(PathBuf);

impl ControlDir {
    fn create() -> Result<ControlDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Unix socket paths are limited to ~108 bytes: keep the name short.
        let dir = base.join(format!("cf-ssh-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating the SSH control directory {}: {e}", dir.display()))?;
        Ok(ControlDir(dir))
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        // Sessions may outlive the transport (`up` keeps its hosts' sessions and drops the
        // transport): their masters are ended by their own `Master` guard, not here.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl AsRef<Path> for ControlDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
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
        };
        let argv = ssh.master_argv(&hostile, Path::new("/c/m0"), Path::new("/c/m0.log"));
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dashdash = argv.iter().position(|a| a == "--").expect("a `--`");
        assert_eq!(dashdash, argv.len() - 2, "{argv:?}");
        assert_eq!(argv[dashdash + 1], hostile.address);
        // Before `--`, every word is an option or the argument of the option just before it.
        let takes_value = ["-E", "-S", "-o", "-p", "-l", "-i"];
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
