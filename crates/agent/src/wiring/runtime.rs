//! [`ContainerRuntime`] for the isolating runtime ([`crate::runtime::Runtime`]): what the
//! supervisor resolved in a [`Launch`] becomes a [`ContainerConfig`]; a pod's containers share its
//! net/uts/ipc sandbox, made with the pod's first container and removed with its last.
//!
//! Where things are: the runtime's state under `<state>/runtime` (pod sandboxes in `pods/`,
//! deferred deletions in `trash/`); each container's runtime directory (`config.json`, overlay
//! dirs) is `<launch.dir>/rt`, so that the shim and the `enter` mode — separate processes that
//! only have the launch — find its config.
//!
//! Which side calls what: `create`/`delete` in the daemon; `start`/`kill`/`oom_killed` in the
//! single-threaded shim; `exec` returns `compose-fleet-agent enter …` (see [`enter_main`]), because
//! entering namespaces must never happen in the threaded daemon.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::proto::ContainerSpec;
use crate::runtime::{self, ContainerConfig, ExecProcess, Placement, Runtime, RuntimeMount};
use crate::supervisor::seam::{ContainerRuntime, ContainerStdio, Launch, ResolvedMount};

/// The isolating runtime as the supervisor sees it.
pub struct IsolatedRuntime {
    /// The daemon's runtime (pods, trash); `None` in the shim, which builds what it needs.
    daemon: Option<Daemon>,
}

struct Daemon {
    runtime: Runtime,
    root: PathBuf,
    /// The agent binary, run as `enter` for `exec`.
    agent_exe: PathBuf,
    /// Pod sandboxes are made and removed under this lock: the containers of a pod are created
    /// and deleted by concurrent tasks.
    pods: Mutex<()>,
}

fn to_io(e: runtime::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// A container's runtime directory: beside its supervisor files, so any process holding the
/// launch finds it.
pub fn container_dir(launch: &Launch) -> PathBuf {
    launch.dir.join("rt")
}

/// The runtime's name of a container: unique in its pod (a pod may hold several replicas).
pub fn container_name(launch: &Launch) -> String {
    format!("{}-{}", launch.service, launch.replica)
}

/// A runtime for a process other than the daemon (shim, enter). Its state dir is the
/// container's own directory, which never holds a `trash/`: `Runtime::new` would otherwise start
/// a thread to empty it, and these processes must stay single-threaded.
fn local_runtime(dir: &Path) -> io::Result<Runtime> {
    Runtime::new(dir).map_err(to_io)
}

/// Checks and merges a launch into the runtime's config. Pure: no I/O.
pub fn container_config(
    launch: &Launch,
    pod_dir: &Path,
    volumes_dir: &Path,
) -> runtime::Result<ContainerConfig> {
    // The supervisor already applied Docker's override rules (argv, env, user, workdir) and
    // resolved the mounts: hand them over as an image with nothing left to override.
    let spec = ContainerSpec {
        entrypoint: Some(launch.argv.clone()),
        command: None,
        env: BTreeMap::new(),
        user: None,
        working_dir: None,
        mounts: Vec::new(),
        files: Vec::new(),
        ..launch.spec.clone()
    };
    let image = runtime::ImageConfig {
        entrypoint: None,
        cmd: None,
        env: launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        user: launch.user.clone(),
        working_dir: launch.working_dir.clone(),
        layers: launch.layers.clone(),
    };
    let at = Placement {
        project: &launch.project,
        pod: &launch.pod,
        hostname: &launch.hostname,
        namespaces: runtime::pod::namespaces_in(pod_dir),
        dir: container_dir(launch),
        volumes_dir,
    };
    let mut cfg = ContainerConfig::build(&spec, &image, at)?;
    cfg.name = container_name(launch);
    cfg.mounts = launch
        .mounts
        .iter()
        .map(|m| match m {
            ResolvedMount::Bind {
                source,
                target,
                read_only,
            } => RuntimeMount::Bind {
                source: source.clone(),
                target: target.clone(),
                read_only: *read_only,
            },
            ResolvedMount::Tmpfs { target, size } => RuntimeMount::Tmpfs {
                target: target.clone(),
                size: *size,
            },
        })
        .collect();
    for m in &cfg.mounts {
        let t = m.target();
        if !t.starts_with('/') || t == "/" {
            return Err(runtime::Error::user(format!(
                "service {:?}: mount target {t:?} must be an absolute path other than /",
                launch.service
            )));
        }
    }
    Ok(cfg)
}

/// Whether `file` is a bind-mounted namespace (nsfs), i.e. the pod sandbox is alive. After a
/// reboot the files remain but hold nothing.
fn is_namespace(file: &Path) -> bool {
    nix::sys::statfs::statfs(file)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

impl IsolatedRuntime {
    pub const NAME: &'static str = "isolated";

    /// The daemon's runtime, keeping its state under `root` (`/var/lib/compose-fleet/runtime`);
    /// `agent_exe` is the agent binary (`exec` runs it as `enter`).
    pub fn open(root: impl Into<PathBuf>, agent_exe: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", root.display())))?;
        let runtime = Runtime::new(&root).map_err(to_io)?;
        Ok(IsolatedRuntime {
            daemon: Some(Daemon {
                runtime,
                root,
                agent_exe: agent_exe.into(),
                pods: Mutex::new(()),
            }),
        })
    }

    /// What the shim gets from `runtime_by_name`: start, kill, oom_killed.
    pub fn for_shim() -> Self {
        IsolatedRuntime { daemon: None }
    }

    fn daemon(&self, what: &str) -> io::Result<&Daemon> {
        self.daemon.as_ref().ok_or_else(|| {
            io::Error::other(format!(
                "{what} is done by the daemon's runtime, not the shim's"
            ))
        })
    }

    fn load(launch: &Launch) -> io::Result<ContainerConfig> {
        Runtime::load(&container_dir(launch)).map_err(to_io)
    }
}

impl ContainerRuntime for IsolatedRuntime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn create(&self, launch: &Launch) -> io::Result<()> {
        let d = self.daemon("create")?;
        let pod_dir = d.runtime.pod_dir(&launch.project, &launch.pod);
        let cfg = container_config(launch, &pod_dir, &d.root.join("volumes")).map_err(to_io)?;
        let _pods = d.pods.lock().unwrap_or_else(|p| p.into_inner());
        if !is_namespace(&pod_dir.join("net")) {
            // A sandbox that lost its namespaces (a reboot, a half-made pod) is made again.
            d.runtime
                .remove_pod(&launch.project, &launch.pod)
                .map_err(to_io)?;
            d.runtime
                .create_pod(&launch.project, &launch.pod, &launch.hostname)
                .map_err(to_io)?;
        }
        d.runtime.create(&cfg).map_err(to_io)
    }

    fn start(&self, launch: &Launch, stdio: ContainerStdio) -> io::Result<u32> {
        let dir = container_dir(launch);
        let cfg = Runtime::load(&dir).map_err(to_io)?;
        let stdio = runtime::Stdio {
            stdin: Some(stdio.stdin),
            stdout: Some(stdio.stdout),
            stderr: Some(stdio.stderr),
        };
        let pid = local_runtime(&dir)?.start(&cfg, stdio).map_err(to_io)?;
        u32::try_from(pid.as_raw()).map_err(io::Error::other)
    }

    fn kill(&self, launch: &Launch, pid: u32, signal: Signal) -> io::Result<()> {
        let dir = container_dir(launch);
        let rt = local_runtime(&dir)?;
        let pid = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
        // The stop signal goes to pid 1, as Docker sends it; SIGKILL to every process.
        rt.kill(pid, signal).map_err(to_io)?;
        if signal == Signal::SIGKILL {
            if let Ok(cfg) = Self::load(launch) {
                rt.kill_all(&cfg, signal).map_err(to_io)?;
            }
        }
        Ok(())
    }

    fn delete(&self, launch: &Launch) -> io::Result<()> {
        let d = self.daemon("delete")?;
        if let Ok(cfg) = Self::load(launch) {
            d.runtime.delete(&cfg).map_err(to_io)?;
        }
        let _pods = d.pods.lock().unwrap_or_else(|p| p.into_inner());
        // The pod's last container takes the sandbox with it.
        let others = launch
            .dir
            .parent()
            .and_then(|pod| std::fs::read_dir(pod).ok())
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path() != launch.dir && e.path().join("rt/config.json").is_file());
        if !others {
            d.runtime
                .remove_pod(&launch.project, &launch.pod)
                .map_err(to_io)?;
        }
        Ok(())
    }

    fn exec(
        &self,
        launch: &Launch,
        pid: u32,
        argv: &[String],
        env: &BTreeMap<String, String>,
    ) -> io::Result<std::process::Command> {
        let d = self.daemon("exec")?;
        let mut cmd = std::process::Command::new(&d.agent_exe);
        cmd.arg("enter")
            .arg(container_dir(launch))
            .arg(pid.to_string());
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg("--").args(argv);
        Ok(cmd)
    }

    fn oom_killed(&self, launch: &Launch) -> bool {
        let dir = container_dir(launch);
        let (Ok(rt), Ok(cfg)) = (local_runtime(&dir), Self::load(launch)) else {
            return false;
        };
        rt.oom_kills(&cfg).is_ok_and(|n| n > 0)
    }
}

/// `compose-fleet-agent enter <container dir> <pid> [--env K=V]… -- <argv>…`: runs `argv` inside
/// the running container whose pid 1 is `pid`, with this process's stdio, and exits with its exit
/// code (128 + signal when killed). Single-threaded; the runtime's init does the entering.
pub fn enter_main(args: &[String]) -> u8 {
    match enter(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("compose-fleet-agent enter: {e}");
            125
        }
    }
}

fn enter(args: &[String]) -> io::Result<u8> {
    let usage = || io::Error::other("usage: enter <container dir> <pid> [--env K=V]… -- <argv>…");
    let (dir, rest) = args.split_first().ok_or_else(usage)?;
    let (pid, mut rest) = rest.split_first().ok_or_else(usage)?;
    let pid: i32 = pid.parse().map_err(|_| usage())?;
    let mut env = Vec::new();
    loop {
        match rest {
            [flag, kv, tail @ ..] if flag == "--env" => {
                env.push(kv.clone());
                rest = tail;
            }
            [sep, tail @ ..] if sep == "--" => {
                rest = tail;
                break;
            }
            _ => return Err(usage()),
        }
    }
    if rest.is_empty() {
        return Err(usage());
    }
    let dir = Path::new(dir);
    let cfg = Runtime::load(dir).map_err(to_io)?;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<OwnedFd> { fd.try_clone_to_owned() };
    let stdio = runtime::Stdio {
        stdin: Some(dup(io::stdin().as_fd())?),
        stdout: Some(dup(io::stdout().as_fd())?),
        stderr: Some(dup(io::stderr().as_fd())?),
    };
    let process = ExecProcess {
        args: rest.to_vec(),
        env,
        user: None,
        cwd: None,
    };
    let waiter = local_runtime(dir)?
        .exec(&cfg, Pid::from_raw(pid), &process, stdio)
        .map_err(to_io)?;
    loop {
        match waitpid(waiter, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(u8::try_from(code).unwrap_or(125)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(u8::try_from(128 + sig as i32).unwrap_or(125))
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io::Error::other(format!("waiting for the exec: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Mount, ResourceLimits};

    fn launch() -> Launch {
        let mut spec = ContainerSpec {
            service: "web".into(),
            replica: 2,
            image: "lab/httpd".into(),
            // Already folded into argv by the supervisor: must not be applied again.
            entrypoint: Some(vec!["/ignored".into()]),
            command: Some(vec!["ignored".into()]),
            mounts: vec![Mount::Tmpfs {
                target: "/ignored".into(),
                size: None,
            }],
            cap_add: vec!["NET_ADMIN".into()],
            read_only: true,
            resources: ResourceLimits {
                cpus: Some(0.5),
                ..ResourceLimits::default()
            },
            ..ContainerSpec::default()
        };
        spec.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        spec.ulimits.insert("nofile".into(), (1024, 2048));
        Launch {
            id: "p.web-0.web-2".into(),
            project: "p".into(),
            pod: "web-0".into(),
            service: "web".into(),
            replica: 2,
            dir: PathBuf::from("/state/projects/p/pods/web-0/web-2"),
            argv: vec!["/bin/httpd".into(), "-f".into()],
            env: [("PATH".to_string(), "/bin".to_string())].into(),
            user: Some("1000".into()),
            working_dir: Some("/www".into()),
            hostname: "web-0".into(),
            layers: vec![PathBuf::from("/l/1"), PathBuf::from("/l/2")],
            mounts: vec![
                ResolvedMount::Bind {
                    source: "/state/volumes/p/data".into(),
                    target: "/data".into(),
                    read_only: false,
                },
                ResolvedMount::Tmpfs {
                    target: "/tmp".into(),
                    size: Some(1 << 20),
                },
            ],
            spec,
            runtime: IsolatedRuntime::NAME.into(),
            log_max_bytes: 1,
            log_max_files: 1,
        }
    }

    #[test]
    fn a_launch_becomes_the_runtime_config() {
        let l = launch();
        let cfg = container_config(&l, Path::new("/rt/pods/p/web-0"), Path::new("/v")).unwrap();
        assert_eq!(cfg.name, "web-2");
        assert_eq!(
            cfg.dir,
            PathBuf::from("/state/projects/p/pods/web-0/web-2/rt")
        );
        assert_eq!(cfg.cgroup_path(), "compose-fleet/p/web-0/web-2");
        assert_eq!(cfg.args, vec!["/bin/httpd", "-f"]);
        assert!(cfg.env.contains(&"PATH=/bin".to_string()));
        assert!(cfg.env.contains(&"HOSTNAME=web-0".to_string()));
        assert_eq!(cfg.user.as_deref(), Some("1000"));
        assert_eq!(cfg.cwd, "/www");
        assert_eq!(cfg.hostname, "web-0");
        assert_eq!(cfg.layers, l.layers);
        assert_eq!(cfg.namespaces.net, PathBuf::from("/rt/pods/p/web-0/net"));
        assert_eq!(cfg.namespaces.uts, PathBuf::from("/rt/pods/p/web-0/uts"));
        assert_eq!(
            cfg.mounts,
            vec![
                RuntimeMount::Bind {
                    source: "/state/volumes/p/data".into(),
                    target: "/data".into(),
                    read_only: false,
                },
                RuntimeMount::Tmpfs {
                    target: "/tmp".into(),
                    size: Some(1 << 20),
                },
            ]
        );
        assert!(cfg.read_only);
        assert!(cfg.seccomp && cfg.no_new_privs && !cfg.privileged);
        assert_eq!(cfg.resources.cpus, Some(0.5));
        assert_eq!(cfg.rlimits.len(), 1);
        assert_eq!(cfg.sysctls.len(), 1);
        let default = container_config(
            &Launch {
                spec: ContainerSpec::default(),
                ..l.clone()
            },
            Path::new("/rt"),
            Path::new("/v"),
        )
        .unwrap();
        assert_ne!(cfg.capabilities, default.capabilities, "cap_add applies");
    }

    #[test]
    fn bad_spec_parts_are_refused_with_the_service() {
        let mut l = launch();
        l.spec.sysctls.insert("kernel.panic".into(), "1".into());
        let e = container_config(&l, Path::new("/rt"), Path::new("/v")).unwrap_err();
        assert!(e.user);
        assert!(e.to_string().contains("kernel.panic"), "{e}");
        let mut l = launch();
        l.mounts.push(ResolvedMount::Tmpfs {
            target: "relative".into(),
            size: None,
        });
        assert!(container_config(&l, Path::new("/rt"), Path::new("/v")).is_err());
    }

    #[test]
    fn exec_enters_through_the_agent_binary() {
        let rt = IsolatedRuntime { daemon: None };
        // The shim's runtime cannot exec: only the daemon holds the agent binary's path.
        assert!(rt
            .exec(&launch(), 1, &["true".into()], &BTreeMap::new())
            .is_err());
    }

    #[test]
    fn enter_arguments_are_checked() {
        assert_eq!(enter_main(&[]), 125);
        assert_eq!(enter_main(&["/nope".into(), "1".into(), "x".into()]), 125);
        assert_eq!(
            enter_main(&["/nope".into(), "pid".into(), "--".into()]),
            125
        );
    }
}
