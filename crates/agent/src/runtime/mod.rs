//! The container runtime: pod sandboxes (net/uts/ipc namespaces), containers (mount and pid
//! namespaces, overlay rootfs, `/proc`, `/dev`, `/sys`, mounts, capabilities, no_new_privs,
//! seccomp, cgroup v1/v2 limits), and `exec` into a running container.
//!
//! Owns: the kernel side of one container's life. Does not own: waiting for/reaping processes,
//! restarts, logs (the supervisor's shim), images (`image`), pod networking (`network`).
//!
//! ```text
//!  Runtime::create_pod ─▶ pods/<project>/<pod>/{net,uts,ipc}   (bind-mounted namespaces)
//!  ContainerConfig::build(spec, image, placement)               (pure: merge + checks)
//!  Runtime::create ─────▶ containers/<project>/<pod>/<name>/{config.json,upper,work,rootfs}
//!                         + cgroup compose-fleet/<project>/<pod>/<name> with limits
//!  Runtime::start ──────▶ clone(NEWPID|NEWNS) → `agent init` (see `init`) → the process; pid
//!  Runtime::exec ───────▶ `agent init` → setns ×5 → fork → the process; pid of the waiter
//!  Runtime::kill / delete / oom_kills / remove_pod
//! ```
//! Invariants: the agent's threads never change namespace (containers are entered only by a
//! fresh `init` process); nothing is mounted on the host outside the pod namespace files; mount
//! targets are resolved inside the rootfs only (`pathrs`).

pub mod caps;
pub mod cgroup;
pub mod config;
pub mod error;
pub mod init;
pub mod kernel;
pub mod pod;
pub mod seccomp;
pub mod sync;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

pub use config::{ContainerConfig, ImageConfig, Placement, PodNamespaces, RuntimeMount};
pub use error::{Error, Result};

use error::{Context, ResultExt};

/// A process to run inside a running container (`exec`, health checks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecProcess {
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to (or replacing in) the container's env.
    #[serde(default)]
    pub env: Vec<String>,
    /// Overrides the container's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Overrides the container's working directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// The container process's stdin/stdout/stderr; `None` is `/dev/null`.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// How long a parent waits for an init to report (mounts, seccomp, ...): longer is a hang.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime of one host: where its state lives, which binary is the init, which cgroups.
pub struct Runtime {
    state_dir: PathBuf,
    init_exe: PathBuf,
    cgroups: Box<dyn cgroup::Cgroups + Send + Sync>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("state_dir", &self.state_dir)
            .field("init_exe", &self.init_exe)
            .field("cgroups", &self.cgroups.version())
            .finish()
    }
}

/// Project, pod and container names become path components and cgroup names.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::user(format!(
            "{what} name {name:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

impl Runtime {
    /// A runtime keeping its state under `state_dir` (e.g. `/var/lib/compose-fleet`), using this
    /// very binary (`/proc/self/exe init`) as the containers' init.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Runtime> {
        let cgroups = cgroup::detect(&mut kernel::Linux::default())?;
        let state_dir: PathBuf = state_dir.into();
        // Leftovers of deletions a previous process did not finish.
        let trash = state_dir.join("trash");
        if trash.exists() {
            std::thread::spawn(move || fs::remove_dir_all(trash));
        }
        Ok(Runtime {
            state_dir,
            init_exe: PathBuf::from("/proc/self/exe"),
            cgroups,
        })
    }

    /// Uses another agent binary as the init (tests, where the current exe is the test runner).
    pub fn with_init_exe(mut self, exe: impl Into<PathBuf>) -> Runtime {
        self.init_exe = exe.into();
        self
    }

    /// The binary re-executed as the containers' init.
    pub fn init_exe(&self) -> &Path {
        &self.init_exe
    }

    /// `v1` or `v2`.
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    pub fn pod_dir(&self, project: &str, pod: &str) -> PathBuf {
        self.state_dir.join("pods").join(project).join(pod)
    }

    pub fn container_dir(&self, project: &str, pod: &str, name: &str) -> PathBuf {
        self.state_dir
            .join("containers")
            .join(project)
            .join(pod)
            .join(name)
    }

    /// Named volumes of a project live here, one directory each.
    pub fn volumes_dir(&self, project: &str) -> PathBuf {
        self.state_dir.join("volumes").join(project)
    }

    /// Creates a pod's sandbox: net/uts/ipc namespaces with `hostname` and `lo` up.
    pub fn create_pod(&self, project: &str, pod: &str, hostname: &str) -> Result<PodNamespaces> {
        check_name("project", project)?;
        check_name("pod", pod)?;
        pod::create(&self.pod_dir(project, pod), hostname)
    }

    /// [`create_pod`](Self::create_pod) in the host's network namespace (`network_mode: host`).
    pub fn create_host_network_pod(
        &self,
        project: &str,
        pod: &str,
        hostname: &str,
    ) -> Result<PodNamespaces> {
        check_name("project", project)?;
        check_name("pod", pod)?;
        pod::create_with(&self.pod_dir(project, pod), hostname, true)
    }

    /// Removes a pod's sandbox (its containers should be deleted first).
    pub fn remove_pod(&self, project: &str, pod: &str) -> Result<()> {
        pod::remove(&self.pod_dir(project, pod))?;
        // The pod's cgroup and, when it was the last, the project's and `compose-fleet`'s.
        self.cgroups.remove_empty(
            &mut kernel::Linux::default(),
            &format!("compose-fleet/{project}/{pod}"),
        );
        let _ = fs::remove_dir(self.state_dir.join("pods").join(project));
        Ok(())
    }

    /// Where a container of `pod` goes; pass to [`ContainerConfig::build`].
    pub fn placement<'a>(
        &self,
        project: &'a str,
        pod: &'a str,
        hostname: &'a str,
        name: &str,
        volumes_dir: &'a Path,
    ) -> Placement<'a> {
        Placement {
            project,
            pod,
            hostname,
            namespaces: pod::namespaces_in(&self.pod_dir(project, pod)),
            dir: self.container_dir(project, pod, name),
            volumes_dir,
        }
    }

    /// Prepares a container: its directories, missing named-volume directories, `config.json`
    /// (read back by [`Runtime::load`]) and its cgroup with limits.
    pub fn create(&self, cfg: &ContainerConfig) -> Result<()> {
        check_name("project", &cfg.project)?;
        check_name("pod", &cfg.pod)?;
        check_name("container", &cfg.name)?;
        let what = || {
            format!(
                "creating container {}/{}/{}",
                cfg.project, cfg.pod, cfg.name
            )
        };
        let subs: &[&str] = if cfg.layers.is_empty() {
            &["rootfs", "upper", "work", "empty"]
        } else {
            &["rootfs", "upper", "work"]
        };
        for sub in subs {
            let d = cfg.dir.join(sub);
            fs::create_dir_all(&d)
                .with_context(|| format!("creating {}", d.display()))
                .ctx(what)?;
        }
        for m in &cfg.mounts {
            if let RuntimeMount::Bind { source, .. } = m {
                if source.starts_with(self.state_dir.join("volumes")) {
                    fs::create_dir_all(source)
                        .with_context(|| format!("creating volume {}", source.display()))?;
                }
            }
        }
        // The boot the upper dir was made in: see `reuse_upper`.
        let boot = fs::read_to_string(BOOT_ID).unwrap_or_default();
        write_atomic(&cfg.dir.join("boot_id"), boot.as_bytes()).ctx(what)?;
        let json = serde_json::to_vec_pretty(cfg).context("serializing the config")?;
        write_atomic(&cfg.dir.join("config.json"), &json).ctx(what)?;
        self.cgroups
            .create(
                &mut kernel::Linux::default(),
                &cfg.cgroup_path(),
                &cfg.resources,
            )
            .ctx(what)
    }

    /// Reads back the config of a created container (after a daemon restart).
    pub fn load(dir: &Path) -> Result<ContainerConfig> {
        let file = dir.join("config.json");
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", file.display()))
    }

    /// Starts the container's process; returns its host pid once it has been exec'ed. The caller
    /// is its parent and must reap it (`waitpid`).
    pub fn start(&self, cfg: &ContainerConfig, stdio: Stdio) -> Result<Pid> {
        let what = || {
            format!(
                "starting container {}/{}/{}",
                cfg.project, cfg.pod, cfg.name
            )
        };
        reuse_upper(&cfg.dir).ctx(what)?;
        self.run_init(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS,
            &cfg.cgroup_path(),
            &sync::Request::Start(Box::new(cfg.clone())),
            stdio,
        )
        .ctx(what)
    }

    /// Runs `process` inside the running container whose pid 1 is `pid` (host pid), in its
    /// cgroup, with its capabilities, seccomp filter and user. Returns the pid of a waiter that
    /// exits with the process's exit code (128 + signal when killed); killing the waiter kills
    /// the process. The caller reaps it.
    pub fn exec(
        &self,
        cfg: &ContainerConfig,
        pid: Pid,
        process: &ExecProcess,
        stdio: Stdio,
    ) -> Result<Pid> {
        let what = || format!("exec in container {}/{}/{}", cfg.project, cfg.pod, cfg.name);
        self.run_init(
            CloneFlags::empty(),
            &cfg.cgroup_path(),
            &sync::Request::Exec {
                config: Box::new(cfg.clone()),
                pid: pid.as_raw(),
                process: process.clone(),
            },
            stdio,
        )
        .ctx(what)
    }

    /// Sends a signal to one process.
    pub fn kill(&self, pid: Pid, signal: Signal) -> Result<()> {
        match nix::sys::signal::kill(pid, signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("sending {signal} to pid {pid}")),
        }
    }

    /// Docker's stop: `signal` to the container's pid 1, then SIGKILL to all its processes once
    /// `grace` has passed. Reaps pid 1 and returns how it ended, so call it from pid 1's parent
    /// (the shim) — and only when nothing else waits for that pid.
    pub fn stop(
        &self,
        cfg: &ContainerConfig,
        pid: Pid,
        signal: Signal,
        grace: Duration,
    ) -> Result<WaitStatus> {
        use nix::sys::wait::WaitPidFlag;
        self.kill(pid, signal)?;
        let deadline = std::time::Instant::now() + grace;
        let mut killed = false;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    return Ok(status)
                }
                Ok(_) => {}
                Err(e) => return Err(e).with_context(|| format!("waiting for pid {pid}")),
            }
            if !killed && std::time::Instant::now() >= deadline {
                // pid 1 ignores signals it has no handler for; SIGKILL always works.
                self.kill_all(cfg, Signal::SIGKILL)?;
                self.kill(pid, Signal::SIGKILL)?;
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal to every process of the container (its cgroup).
    pub fn kill_all(&self, cfg: &ContainerConfig, signal: Signal) -> Result<()> {
        for p in self
            .cgroups
            .pids(&mut kernel::Linux::default(), &cfg.cgroup_path())?
        {
            self.kill(Pid::from_raw(p), signal)?;
        }
        Ok(())
    }

    /// Processes of the container killed by the OOM killer so far.
    pub fn oom_kills(&self, cfg: &ContainerConfig) -> Result<u64> {
        self.cgroups
            .oom_kills(&mut kernel::Linux::default(), &cfg.cgroup_path())
    }

    /// Kills whatever still runs in the container, removes its cgroup and directory. Idempotent.
    pub fn delete(&self, cfg: &ContainerConfig) -> Result<()> {
        let what = || {
            format!(
                "deleting container {}/{}/{}",
                cfg.project, cfg.pod, cfg.name
            )
        };
        if let Ok(pids) = self
            .cgroups
            .pids(&mut kernel::Linux::default(), &cfg.cgroup_path())
        {
            for p in pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        self.cgroups
            .remove(&mut kernel::Linux::default(), &cfg.cgroup_path())
            .ctx(what)?;
        // Removing a directory tree costs milliseconds per entry on a busy disk: move it out of
        // the way (one rename) and remove it on a background thread.
        let trash = self.state_dir.join("trash");
        let _ = fs::create_dir_all(&trash);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let doomed = trash.join(format!("{}-{}-{}-{nanos}", cfg.project, cfg.pod, cfg.name));
        match fs::rename(&cfg.dir, &doomed) {
            Ok(()) => {
                std::thread::spawn(move || fs::remove_dir_all(doomed));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => {
                fs::remove_dir_all(&cfg.dir)
                    .with_context(|| format!("removing {}", cfg.dir.display()))
                    .ctx(what)?;
            }
        }
        Ok(())
    }

    /// Clones an init (`flags` = its new namespaces), puts it in the cgroup, sends `request`
    /// and waits for the verdict (see `sync`).
    fn run_init(
        &self,
        flags: CloneFlags,
        cgroup_path: &str,
        request: &sync::Request,
        stdio: Stdio,
    ) -> Result<Pid> {
        let (mut parent, child) = UnixStream::pair().context("socketpair")?;
        let pid = spawn_init(&self.init_exe, flags, stdio, &child)?;
        drop(child);
        let reap = |pid: Pid| -> String {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, c)) => format!("init exited with code {c}"),
                Ok(WaitStatus::Signaled(_, s, _)) => format!("init was killed by {s}"),
                Ok(other) => format!("init: {other:?}"),
                Err(e) => format!("waiting for init: {e}"),
            }
        };
        if let Err(e) = self
            .cgroups
            .join(&mut kernel::Linux::default(), cgroup_path, pid.as_raw())
        {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            reap(pid);
            return Err(e.context("moving the init into the container's cgroup"));
        }
        let _ = parent.set_read_timeout(Some(INIT_TIMEOUT));
        let sent = sync::send(&mut parent, request);
        let mut exec_announced = false;
        let mut failure: Option<Error> = None;
        loop {
            match sync::recv::<sync::Reply>(&mut parent) {
                Ok(Some(sync::Reply::Exec)) => exec_announced = true,
                Ok(Some(sync::Reply::Error(e))) => {
                    failure = Some(e);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    failure = Some(Error::new(format!("no answer from the init: {e}")));
                    break;
                }
            }
        }
        match failure {
            None if exec_announced => Ok(pid),
            None => {
                let status = reap(pid);
                let cause = match sent {
                    Err(e) => format!("sending the request: {e}; {status}"),
                    Ok(()) => status,
                };
                Err(Error::new("the init ended before starting the process").context(cause))
            }
            Some(e) => {
                reap(pid);
                Err(e)
            }
        }
    }
}

/// A compose `stop_signal` (`SIGTERM`, `TERM`, `15`) as a signal.
pub fn parse_signal(name: &str) -> Result<Signal> {
    let name = name.trim();
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::user(format!("unknown signal number {n}")));
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| Error::user(format!("unknown signal {name:?}; use a name like SIGTERM")))
}

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Lets a restarted container mount its upper dir again. The overlay is `volatile`, which leaves
/// `work/work/incompat/volatile` behind and refuses a second mount while it exists: safe to
/// remove when no reboot (no crash) happened since the dir was made, otherwise the writes may be
/// torn and the container must be recreated.
fn reuse_upper(dir: &Path) -> Result<()> {
    let marker = dir.join("work/work/incompat/volatile");
    if !marker.exists() {
        return Ok(());
    }
    let made_in = fs::read_to_string(dir.join("boot_id")).unwrap_or_default();
    let now = fs::read_to_string(BOOT_ID).unwrap_or_default();
    if made_in.is_empty() || made_in != now {
        return Err(Error::new(format!(
            "the container's filesystem in {} was not unmounted cleanly before a reboot; delete and create the container again",
            dir.display()
        )));
    }
    fs::remove_dir_all(&marker).with_context(|| format!("removing {}", marker.display()))
}

/// Writes a file atomically: temp file, rename. No fsync: the file describes a container, which
/// a machine crash ends anyway (it is what lets a restarted daemon adopt it).
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    // 0600: a container's config holds its environment, which may carry credentials.
    crate::store::write_atomic(path, data, 0o600)
        .with_context(|| "saving container state".to_string())
}

/// Clones a child running `exe init` with stdio on 0-2 and the sync socket on fd 3.
///
/// The child of `clone` may belong to a multi-threaded parent: it only makes raw syscalls
/// (`fcntl`, `dup2`, `execve`, `_exit`) on values prepared here, never allocates.
fn spawn_init(exe: &Path, flags: CloneFlags, stdio: Stdio, sync: &UnixStream) -> Result<Pid> {
    let exe_c = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| Error::new("init executable path contains a NUL byte"))?;
    let arg0 = CString::new("compose-fleet-agent").unwrap_or_default();
    let arg1 = CString::new("init").unwrap_or_default();
    let argv: [*const libc::c_char; 3] = [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let devnull = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .context("opening /dev/null")
    };
    let stdin = match stdio.stdin {
        Some(f) => f,
        None => devnull()?,
    };
    let stdout = match stdio.stdout {
        Some(f) => f,
        None => devnull()?,
    };
    let stderr = match stdio.stderr {
        Some(f) => f,
        None => devnull()?,
    };
    let fds: [RawFd; 4] = [
        stdin.as_raw_fd(),
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
        sync.as_raw_fd(),
    ];
    let (exe_p, argv_p, envp_p) = (exe_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
    let mut stack = vec![0u8; 64 * 1024];
    let cb = Box::new(move || -> isize {
        // SAFETY: only async-signal-safe syscalls on fds and C strings that outlive the clone.
        unsafe {
            let mut moved = [0 as RawFd; 4];
            for (i, fd) in fds.iter().enumerate() {
                // First move every fd above 10 so the dup2 below cannot clobber a source.
                moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if moved[i] < 0 {
                    libc::_exit(126);
                }
            }
            for (i, fd) in moved.iter().enumerate() {
                if libc::dup2(*fd, i as libc::c_int) < 0 {
                    libc::_exit(126);
                }
            }
            libc::execve(exe_p, argv_p, envp_p);
            libc::_exit(127)
        }
    });
    // SAFETY: the child only runs the callback above (see its comment).
    let pid = unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) }
        .with_context(|| format!("clone({flags:?}) for {}", exe.display()))?;
    drop((stdin, stdout, stderr));
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_like_docker() {
        assert_eq!(parse_signal("SIGQUIT").unwrap(), Signal::SIGQUIT);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").unwrap_err().user);
    }

    #[test]
    fn names_that_become_paths_are_checked() {
        assert!(check_name("pod", "web-1").is_ok());
        for bad in ["", "..", "a/b", "a b"] {
            assert!(check_name("pod", bad).is_err(), "{bad:?}");
        }
    }
}
