//! The container side: what `compose-fleet-agent init` does between the parent's clone and the
//! process's `execve`. Single-threaded, before any async runtime; every kernel call goes through
//! [`Kernel`] so the whole plan is unit-tested with the recording fake.
//!
//! Order (start): join the pod's net/uts/ipc → private mount propagation → overlay rootfs →
//! `/proc`, `/dev` (+ nodes, pts, shm, fd links), read-only `/sys`, user mounts (each target
//! resolved inside the rootfs) → `pivot_root` → sysctls → read-only and masked paths like Docker →
//! read-only `/` → rlimits → chdir → user/groups → capabilities → no_new_privs → seccomp → execve.
//! Exec: join the running container's ipc/uts/net/pid/mnt, fork (to enter the pid namespace), then
//! the same process steps.

use std::ffi::CString;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::config::ContainerConfig;
use super::error::{Context, Error, Result, ResultExt};
use super::kernel::{CapSets, Kernel, Linux, Target};
use super::sync::{self, Reply, Request};
use super::ExecProcess;

/// The fd the parent hands the sync socket on.
pub const SYNC_FD: RawFd = 3;

/// Device nodes bound from the host into the container's `/dev`.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Docker's masked paths: files get `/dev/null` bound over them, directories an empty read-only
/// tmpfs.
pub const MASKED: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Entry point of `compose-fleet-agent init`: reads its request from fd 3 and never returns on
/// success (the process is exec'ed). Returns the exit code on failure.
pub fn main() -> u8 {
    // Not inherited by the container's process: EOF tells the parent the execve happened.
    // SAFETY: fcntl on an fd number; it fails harmlessly when fd 3 is not open.
    if unsafe { libc::fcntl(SYNC_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        eprintln!("compose-fleet-agent init: fd 3 is not the sync socket; this mode is started by the agent only");
        return 2;
    }
    // SAFETY: the parent put the sync socket on fd 3 and nothing else in this process owns it.
    let mut sock = unsafe { UnixStream::from_raw_fd(SYNC_FD) };
    reset_signals();
    // No fd the agent may have inherited without close-on-exec reaches the container.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; older kernels fail harmlessly.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    let request: Request = match sync::recv(&mut sock) {
        Ok(Some(r)) => r,
        Ok(None) => return 1, // The parent gave up before sending anything.
        Err(e) => {
            let _ = sync::send(
                &mut sock,
                &Reply::Error(Error::new(format!("reading the init request: {e}"))),
            );
            return 1;
        }
    };
    let mut k = Linux::default();
    let err = match request {
        Request::Start(config) => match start(&mut k, &config, &mut sock) {
            Ok(never) => match never {},
            Err(e) => e,
        },
        Request::Exec {
            config,
            pid,
            process,
        } => return exec(&mut k, &config, pid, &process, sock),
    };
    let _ = sync::send(&mut sock, &Reply::Error(err));
    1
}

/// Rust's runtime ignores SIGPIPE and an agent may block signals; the container's process must
/// start with default dispositions and an empty mask, as under Docker.
fn reset_signals() {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    // SAFETY: restoring the default disposition installs no handler.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn start(
    k: &mut dyn Kernel,
    cfg: &ContainerConfig,
    sock: &mut UnixStream,
) -> Result<std::convert::Infallible> {
    join_pod(k, cfg).ctx(|| "joining the pod's namespaces")?;
    setup_rootfs(k, cfg).ctx(|| "setting up the root filesystem")?;
    let process = ExecProcess {
        args: cfg.args.clone(),
        env: Vec::new(),
        user: None,
        cwd: None,
    };
    let prepared = prepare_process(k, cfg, &process)?;
    exec_now(sock, prepared)
}

/// Joins the pod's net, uts and ipc namespaces.
pub fn join_pod(k: &mut dyn Kernel, cfg: &ContainerConfig) -> Result<()> {
    k.setns(&cfg.namespaces.net, CloneFlags::CLONE_NEWNET)?;
    k.setns(&cfg.namespaces.uts, CloneFlags::CLONE_NEWUTS)?;
    k.setns(&cfg.namespaces.ipc, CloneFlags::CLONE_NEWIPC)
}

/// The overlay's `lowerdir=` list: uppermost first (OCI layers come bottom first).
pub fn lowerdirs(cfg: &ContainerConfig) -> String {
    if cfg.layers.is_empty() {
        return cfg.dir.join("empty").display().to_string();
    }
    cfg.layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Mounts the container's root filesystem and pivots into it.
pub fn setup_rootfs(k: &mut dyn Kernel, cfg: &ContainerConfig) -> Result<()> {
    use MsFlags as F;
    let root = cfg.dir.join("rootfs");
    let inr = |path: &str, file: bool| Target::InRoot {
        root: root.clone(),
        path: path.to_string(),
        file,
    };
    // Nothing mounted here may leak back to the host (or in from it).
    k.mount(
        None,
        &Target::Host("/".into()),
        None,
        F::MS_REC | F::MS_PRIVATE,
        None,
    )?;
    let data = format!(
        // `volatile`: no sync of the upper filesystem at unmount (a container's writes do not
        // outlive a crash anyway); `Runtime::start` guards the reuse of the upper dir.
        "lowerdir={},upperdir={},workdir={},volatile",
        lowerdirs(cfg),
        cfg.dir.join("upper").display(),
        cfg.dir.join("work").display()
    );
    // `nodev` on every filesystem the container can write (rootfs, /dev, volumes): with
    // CAP_MKNOD in the default set, a node made for the host's disk must not open. Docker gets
    // the same from its device cgroup; this works alike on cgroup v1 and v2. The device nodes
    // bound into /dev below are mounts of their own and keep working.
    let nodev = if cfg.privileged {
        F::empty()
    } else {
        F::MS_NODEV
    };
    k.mount(
        Some("overlay"),
        &Target::Host(root.clone()),
        Some("overlay"),
        nodev,
        Some(&data),
    )?;

    k.mount(
        Some("proc"),
        &inr("/proc", false),
        Some("proc"),
        F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        None,
    )?;
    k.mount(
        Some("tmpfs"),
        &inr("/dev", false),
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_STRICTATIME | nodev,
        Some("mode=755,size=65536k"),
    )?;
    for dev in DEVICES {
        let host = format!("/dev/{dev}");
        k.mount(Some(&host), &inr(&host, true), None, F::MS_BIND, None)?;
    }
    k.mount(
        Some("devpts"),
        &inr("/dev/pts", false),
        Some("devpts"),
        F::MS_NOSUID | F::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    k.mount(
        Some("shm"),
        &inr("/dev/shm", false),
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        k.symlink(&root, link, to)?;
    }
    k.mount(
        Some("sysfs"),
        &inr("/sys", false),
        Some("sysfs"),
        F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        None,
    )?;

    // Parents before children (`/data` before `/data/cache`), like Docker.
    let mut mounts: Vec<&super::config::RuntimeMount> = cfg.mounts.iter().collect();
    mounts.sort_by_key(|m| Path::new(m.target()).components().count());
    for m in mounts {
        match m {
            super::config::RuntimeMount::Bind {
                source,
                target,
                read_only,
            } => {
                if !k.exists(source) {
                    return Err(Error::user(format!(
                        "bind mount source {} does not exist on this host",
                        source.display()
                    )));
                }
                let file = !k.is_dir(source);
                let src = source.display().to_string();
                k.mount(
                    Some(&src),
                    &inr(target, file),
                    None,
                    F::MS_BIND | F::MS_REC,
                    None,
                )?;
                // A bind keeps its source's flags: add nodev (and ro) with a remount.
                let ro = if *read_only { F::MS_RDONLY } else { F::empty() };
                if !(ro | nodev).is_empty() {
                    k.mount(
                        None,
                        &inr(target, file),
                        None,
                        F::MS_BIND | F::MS_REMOUNT | F::MS_REC | ro | nodev,
                        None,
                    )?;
                }
            }
            super::config::RuntimeMount::Tmpfs { target, size } => {
                let data = match size {
                    Some(s) => format!("mode=1777,size={s}"),
                    None => "mode=1777".to_string(),
                };
                k.mount(
                    Some("tmpfs"),
                    &inr(target, false),
                    Some("tmpfs"),
                    F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
                    Some(&data),
                )?;
            }
        }
    }
    // Docker creates a missing working directory.
    k.mkdir_in_root(&root, &cfg.cwd)?;

    k.pivot_root(&root)?;

    for (key, value) in &cfg.sysctls {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        k.write_file(&path, value)
            .with_context(|| format!("setting sysctl {key}={value}"))?;
    }
    for p in READ_ONLY {
        let path = Path::new(p);
        if !k.exists(path) {
            continue;
        }
        let t = Target::Host(path.into());
        k.mount(Some(p), &t, None, F::MS_BIND | F::MS_REC, None)?;
        k.mount(
            None,
            &t,
            None,
            F::MS_BIND | F::MS_REMOUNT | F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
            None,
        )?;
    }
    if !cfg.privileged {
        for p in MASKED {
            let path = Path::new(p);
            if !k.exists(path) {
                continue;
            }
            let t = Target::Host(path.into());
            if k.is_dir(path) {
                k.mount(Some("tmpfs"), &t, Some("tmpfs"), F::MS_RDONLY, None)?;
            } else {
                k.mount(Some("/dev/null"), &t, None, F::MS_BIND, None)?;
            }
        }
    }
    if cfg.read_only {
        k.mount(
            None,
            &Target::Host("/".into()),
            None,
            F::MS_BIND | F::MS_REMOUNT | F::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// A user and its groups, resolved in the container's `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) like runc's `GetExecUser`: a numeric
/// uid absent from passwd is fine (gid 0, home `/`); a name must exist.
pub fn resolve_user(k: &mut dyn Kernel, user: Option<&str>) -> Result<Identity> {
    let passwd = k.read_file(Path::new("/etc/passwd")).unwrap_or_default();
    let group = k.read_file(Path::new("/etc/group")).unwrap_or_default();
    let spec = user.unwrap_or("0");
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 7)
        .collect();
    let found = entries.iter().find(|f| {
        f[0] == u || (u.parse::<u32>().ok() == f[2].parse::<u32>().ok() && u.parse::<u32>().is_ok())
    });
    let (uid, mut gid, home, name) = match (found, u.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>()
                .map_err(|_| Error::user(format!("bad uid in /etc/passwd for {}", f[0])))?,
            f[3].parse::<u32>().unwrap_or(0),
            f[5].to_string(),
            Some(f[0]),
        ),
        (None, Ok(n)) => (n, 0, "/".to_string(), None),
        (None, Err(_)) => {
            return Err(Error::user(format!(
                "unable to find user {u}: no matching entries in the image's /etc/passwd"
            )))
        }
    };
    let groups_file: Vec<Vec<&str>> = group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups_file
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    Error::user(format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    ))
                })?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for f in &groups_file {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(n) = f[2].parse::<u32>() {
                    if !groups.contains(&n) {
                        groups.push(n);
                    }
                }
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

/// Everything for the final `execve`.
#[derive(Debug)]
pub struct Prepared {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
}

/// Merges env overrides (`KEY=VALUE`) into a base env.
fn merge_env(base: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for kv in extra {
        let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e) == key)
        {
            Some(slot) => *slot = kv.clone(),
            None => out.push(kv.clone()),
        }
    }
    out
}

/// The process steps, inside the container (after `pivot_root` or `setns`): rlimits, cwd,
/// credentials, capabilities, no_new_privs, seccomp; returns what to `execve`.
pub fn prepare_process(
    k: &mut dyn Kernel,
    cfg: &ContainerConfig,
    process: &ExecProcess,
) -> Result<Prepared> {
    for r in &cfg.rlimits {
        k.setrlimit(&r.name, r.soft, r.hard)?;
    }
    let user = process.user.as_deref().or(cfg.user.as_deref());
    let id = resolve_user(k, user)?;
    let mut env = merge_env(&cfg.env, &process.env);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", id.home));
    }
    let cwd = process.cwd.as_deref().unwrap_or(&cfg.cwd);
    k.chdir(Path::new(cwd))?;
    let path = find_executable(k, &process.args, &env)?;
    if !cfg.privileged {
        k.drop_bounding(cfg.capabilities)?;
    }
    k.set_identity(id.uid, id.gid, &id.groups)?;
    if !cfg.privileged {
        // Root gets the set as effective/permitted; other users only keep it in the bounding set
        // (what Docker does since CVE-2022-24769): file capabilities can still grant them.
        let granted = if id.uid == 0 { cfg.capabilities } else { 0 };
        k.set_capabilities(CapSets {
            effective: granted,
            permitted: granted,
        })?;
    }
    if cfg.no_new_privs {
        k.set_no_new_privs()?;
    }
    if cfg.seccomp {
        let filters = super::seccomp::default_filters(cfg.capabilities)?;
        k.seccomp(&filters)?;
    }
    let cstr =
        |s: &str| CString::new(s).map_err(|_| Error::user(format!("{s:?} contains a NUL byte")));
    Ok(Prepared {
        path: CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::user("executable path contains a NUL byte"))?,
        argv: process
            .args
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<_>>()?,
        env: env.iter().map(|e| cstr(e)).collect::<Result<_>>()?,
    })
}

/// `argv[0]` through the container's `PATH`, like runc (not the agent's `PATH`).
fn find_executable(k: &mut dyn Kernel, args: &[String], env: &[String]) -> Result<PathBuf> {
    let arg0 = args
        .first()
        .ok_or_else(|| Error::user("no command specified"))?;
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::config::DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if k.exists(&candidate) && !k.is_dir(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::user(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    )))
}

/// Tells the parent setup is over and becomes the process.
fn exec_now(sock: &mut UnixStream, p: Prepared) -> Result<std::convert::Infallible> {
    sync::send(sock, &Reply::Exec).context("telling the parent the process starts")?;
    let err = nix::unistd::execve(&p.path, &p.argv, &p.env).unwrap_err();
    Err(Error {
        message: "starting the container's process".into(),
        causes: vec![format!("exec {:?}: {err}", p.path)],
        user: err == nix::Error::ENOENT || err == nix::Error::EACCES,
    })
}

/// `exec`: joins the container of pid 1 `pid`, forks into its pid namespace, runs `process`, and
/// returns its exit code (128 + signal when killed) — this intermediate process is what the
/// caller waits for.
fn exec(
    k: &mut dyn Kernel,
    cfg: &ContainerConfig,
    pid: i32,
    process: &ExecProcess,
    mut sock: UnixStream,
) -> u8 {
    match exec_inner(k, cfg, pid, process, &mut sock) {
        Ok(Some(child)) => {
            // Only the child's copy of the socket may keep the parent's read open.
            drop(sock);
            wait_exit_code(child)
        }
        Ok(None) => 1,
        Err(e) => {
            let _ = sync::send(&mut sock, &Reply::Error(e));
            1
        }
    }
}

/// Waits for the exec'd process; its exit code, or 128 + signal like a shell.
fn wait_exit_code(child: nix::unistd::Pid) -> u8 {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return code as u8,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                return 128u8.wrapping_add(sig as u8)
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// Joins the namespaces and forks; `Some(child)` in the intermediate, never returns in the child.
fn exec_inner(
    k: &mut dyn Kernel,
    cfg: &ContainerConfig,
    pid: i32,
    process: &ExecProcess,
    sock: &mut UnixStream,
) -> Result<Option<nix::unistd::Pid>> {
    // The mount namespace goes last: after it, /proc is the container's.
    for (ns, kind) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        k.setns(&PathBuf::from(format!("/proc/{pid}/ns/{ns}")), kind)
            .ctx(|| format!("entering the container of pid {pid}"))?;
    }
    // SAFETY: this process is single-threaded.
    match unsafe { nix::unistd::fork() }.context("fork into the container's pid namespace")? {
        nix::unistd::ForkResult::Child => {
            // Never outlive the intermediate the caller waits for (health check timeouts).
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            let result = prepare_process(k, cfg, process).and_then(|p| exec_now(sock, p));
            let err = match result {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = sync::send(sock, &Reply::Error(err));
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(1) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ContainerSpec, Mount};
    use crate::runtime::config::{ImageConfig, Placement, PodNamespaces};
    use crate::runtime::kernel::Recording;

    fn config(spec: ContainerSpec) -> ContainerConfig {
        let image = ImageConfig {
            cmd: Some(vec!["sh".into()]),
            layers: vec!["/l/base".into(), "/l/top".into()],
            ..Default::default()
        };
        let at = Placement {
            project: "p",
            pod: "pod",
            hostname: "pod",
            namespaces: PodNamespaces {
                net: "/s/pods/p/pod/net".into(),
                uts: "/s/pods/p/pod/uts".into(),
                ipc: "/s/pods/p/pod/ipc".into(),
            },
            dir: "/s/c".into(),
            volumes_dir: Path::new("/s/volumes/p"),
        };
        ContainerConfig::build(&spec, &image, at).unwrap()
    }

    #[test]
    fn rootfs_plan_mounts_in_order_inside_the_root_then_pivots_and_hardens() {
        let mut spec = ContainerSpec {
            service: "web".into(),
            read_only: true,
            working_dir: Some("/srv/app".into()),
            ..Default::default()
        };
        spec.sysctls
            .insert("net.core.somaxconn".into(), "1024".into());
        spec.mounts = vec![
            Mount::Tmpfs {
                target: "/data/cache".into(),
                size: Some(1 << 20),
            },
            Mount::Bind {
                source: "/etc/hosts".into(),
                target: "/etc/hosts".into(),
                read_only: true,
            },
            Mount::Volume {
                name: "db".into(),
                target: "/data".into(),
                read_only: false,
            },
        ];
        let cfg = config(spec);
        let mut k = Recording::default();
        k.existing.insert("/s/volumes/p/db".into());
        k.existing.insert("/etc/hosts".into());
        k.existing.insert("/proc/sys".into());
        k.existing.insert("/sys/firmware".into());
        // is_dir: `existing` doubles as "is a directory" in the fake; make /etc/hosts a file.
        k.existing.remove(Path::new("/etc/hosts"));
        k.files.insert("/etc/hosts".into(), String::new());
        k.files.insert("/proc/keys".into(), String::new());
        join_pod(&mut k, &cfg).unwrap();
        setup_rootfs(&mut k, &cfg).unwrap();
        let expected = [
            "setns /s/pods/p/pod/net CloneFlags(CLONE_NEWNET)",
            "setns /s/pods/p/pod/uts CloneFlags(CLONE_NEWUTS)",
            "setns /s/pods/p/pod/ipc CloneFlags(CLONE_NEWIPC)",
            "mount - / - rec,private -",
            "mount overlay /s/c/rootfs overlay nodev lowerdir=/l/top:/l/base,upperdir=/s/c/upper,workdir=/s/c/work,volatile",
            "mount proc <root>/proc proc nosuid,nodev,noexec -",
            "mount tmpfs <root>/dev tmpfs nosuid,nodev,strictatime mode=755,size=65536k",
            "mount /dev/null <root>/dev/null (file) - bind -",
            "mount /dev/zero <root>/dev/zero (file) - bind -",
            "mount /dev/full <root>/dev/full (file) - bind -",
            "mount /dev/random <root>/dev/random (file) - bind -",
            "mount /dev/urandom <root>/dev/urandom (file) - bind -",
            "mount /dev/tty <root>/dev/tty (file) - bind -",
            "mount devpts <root>/dev/pts devpts nosuid,noexec newinstance,ptmxmode=0666,mode=0620,gid=5",
            "mount shm <root>/dev/shm tmpfs nosuid,nodev,noexec mode=1777,size=65536k",
            "symlink <root>/dev/fd -> /proc/self/fd",
            "symlink <root>/dev/stdin -> /proc/self/fd/0",
            "symlink <root>/dev/stdout -> /proc/self/fd/1",
            "symlink <root>/dev/stderr -> /proc/self/fd/2",
            "symlink <root>/dev/ptmx -> pts/ptmx",
            "mount sysfs <root>/sys sysfs ro,nosuid,nodev,noexec -",
            // Shallow targets first (/data before /data/cache), otherwise as written.
            "mount /s/volumes/p/db <root>/data - bind,rec -",
            "mount - <root>/data - nodev,remount,bind,rec -",
            "mount tmpfs <root>/data/cache tmpfs nosuid,nodev,noexec mode=1777,size=1048576",
            "mount /etc/hosts <root>/etc/hosts (file) - bind,rec -",
            "mount - <root>/etc/hosts (file) - ro,nodev,remount,bind,rec -",
            "mkdir <root>/srv/app",
            "pivot_root /s/c/rootfs",
            "write /proc/sys/net/core/somaxconn 1024",
            "mount /proc/sys /proc/sys - bind,rec -",
            "mount - /proc/sys - ro,nosuid,nodev,noexec,remount,bind -",
            "mount /dev/null /proc/keys - bind -",
            "mount tmpfs /sys/firmware tmpfs ro -",
            "mount - / - ro,remount,bind -",
        ];
        assert_eq!(k.calls, expected);
    }

    #[test]
    fn process_plan_for_root_keeps_the_set_and_seals_with_seccomp_last() {
        let mut spec = ContainerSpec {
            service: "web".into(),
            ..Default::default()
        };
        spec.ulimits.insert("nofile".into(), (1024, 2048));
        let cfg = config(spec);
        let mut k = Recording::default();
        k.files.insert(
            "/etc/passwd".into(),
            "root:x:0:0:root:/root:/bin/sh\n".into(),
        );
        k.files.insert("/bin/sh".into(), String::new());
        let p = prepare_process(
            &mut k,
            &cfg,
            &ExecProcess {
                args: cfg.args.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            k.calls,
            [
                "setrlimit nofile 1024 2048",
                "chdir /",
                "bounding keep=0xa80425fb",
                "identity 0:0 groups [0]",
                "caps effective=0xa80425fb permitted=0xa80425fb",
                "no_new_privs",
                "seccomp 2 filters",
            ]
        );
        assert_eq!(p.path.to_str().unwrap(), "/bin/sh");
        assert!(p.env.iter().any(|e| e.to_str() == Ok("HOME=/root")));
    }

    #[test]
    fn named_user_gets_its_groups_and_no_effective_capabilities() {
        let cfg = config(ContainerSpec {
            service: "web".into(),
            user: Some("app:staff".into()),
            ..Default::default()
        });
        let mut k = Recording::default();
        k.files.insert(
            "/etc/passwd".into(),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into(),
        );
        k.files.insert(
            "/etc/group".into(),
            "staff:x:50:\nwheel:x:10:root,app\napp:x:1000:\n".into(),
        );
        let id = resolve_user(&mut k, cfg.user.as_deref()).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1000,
                gid: 50,
                groups: vec![50, 10],
                home: "/home/app".into()
            }
        );
        // A numeric uid unknown to passwd is fine (gid 0), a name is not.
        assert_eq!(resolve_user(&mut k, Some("4242")).unwrap().gid, 0);
        assert!(resolve_user(&mut k, Some("ghost")).unwrap_err().user);

        k.files.insert("/bin/sh".into(), String::new());
        prepare_process(
            &mut k,
            &cfg,
            &ExecProcess {
                args: vec!["sh".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(k
            .calls
            .contains(&"caps effective=0x0 permitted=0x0".to_string()));
    }
}
