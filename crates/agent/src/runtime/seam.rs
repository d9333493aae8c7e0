//! The isolating runtime behind the supervisor's [`ContainerRuntime`] seam: [`Isolated`].
//!
//! Registering it is one line in `supervisor::seam::runtime_by_name` (the supervisor's file):
//! `Isolated::NAME => Isolated::from_env().ok().map(|r| Arc::new(r) as _)`.
//!
//! Layout: the runtime's own container directory is `<launch.dir>/runtime` (rootfs mount point,
//! upper, work, `config.json`); pods and volumes live under the agent's state dir.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{ContainerConfig, Error, ImageConfig, Runtime, Stdio};
use crate::proto::Mount;
use crate::supervisor::seam::{ContainerRuntime, ContainerStdio, Launch, ResolvedMount};

/// Namespaces, overlay rootfs, cgroups, capabilities and seccomp for supervised containers.
#[derive(Debug)]
pub struct Isolated {
    rt: Runtime,
}

fn io_err(e: Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Isolated {
    pub const NAME: &'static str = "isolated";

    /// Pods under `state_dir/pods`, with this binary as the containers' init.
    pub fn new(state_dir: impl Into<PathBuf>) -> io::Result<Isolated> {
        Ok(Isolated {
            rt: Runtime::new(state_dir).map_err(io_err)?,
        })
    }

    /// With the agent's state dir (`COMPOSE_FLEET_STATE_DIR` or `/var/lib/compose-fleet`).
    pub fn from_env() -> io::Result<Isolated> {
        Isolated::new(crate::store::Paths::from_env().state)
    }

    /// Uses another binary as the init (tests).
    pub fn with_init_exe(self, exe: impl Into<PathBuf>) -> Isolated {
        Isolated {
            rt: self.rt.with_init_exe(exe),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    fn dir(launch: &Launch) -> PathBuf {
        launch.dir.join("runtime")
    }

    /// The runtime config for a launch: the supervisor already merged argv/env/user/workdir, so
    /// they enter as an "image" the compose spec does not override.
    pub fn config(&self, launch: &Launch) -> Result<ContainerConfig, Error> {
        let image = ImageConfig {
            entrypoint: Some(launch.argv.clone()),
            cmd: None,
            env: launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            user: launch.user.clone(),
            working_dir: launch.working_dir.clone(),
            layers: launch.layers.clone(),
        };
        let mut spec = launch.spec.clone();
        spec.entrypoint = None;
        spec.command = None;
        spec.env = BTreeMap::new();
        spec.user = None;
        spec.working_dir = None;
        spec.files = Vec::new();
        spec.mounts = launch
            .mounts
            .iter()
            .map(|m| match m {
                ResolvedMount::Bind {
                    source,
                    target,
                    read_only,
                } => Mount::Bind {
                    source: source.display().to_string(),
                    target: target.clone(),
                    read_only: *read_only,
                },
                ResolvedMount::Tmpfs { target, size } => Mount::Tmpfs {
                    target: target.clone(),
                    size: *size,
                },
            })
            .collect();
        let volumes = self.rt.volumes_dir(&launch.project);
        let mut at = self.rt.placement(
            &launch.project,
            &launch.pod,
            &launch.hostname,
            &spec.service,
            &volumes,
        );
        at.dir = Self::dir(launch);
        ContainerConfig::build(&spec, &image, at)
    }

    fn loaded(launch: &Launch) -> io::Result<ContainerConfig> {
        Runtime::load(&Self::dir(launch)).map_err(io_err)
    }

    /// The OOM count when the current process started (the cgroup outlives restarts).
    fn oom_base_file(launch: &Launch) -> PathBuf {
        Self::dir(launch).join("oom_base")
    }
}

impl ContainerRuntime for Isolated {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn create(&self, launch: &Launch) -> io::Result<()> {
        let net = self.rt.pod_dir(&launch.project, &launch.pod).join("net");
        if !net.exists() {
            if let Err(e) = self
                .rt
                .create_pod(&launch.project, &launch.pod, &launch.hostname)
            {
                // Another container of the pod may have made it meanwhile.
                if !net.exists() {
                    return Err(io_err(e));
                }
            }
        }
        let cfg = self.config(launch).map_err(io_err)?;
        self.rt.create(&cfg).map_err(io_err)
    }

    fn start(&self, launch: &Launch, stdio: ContainerStdio) -> io::Result<u32> {
        let cfg = Self::loaded(launch)?;
        let base = self.rt.oom_kills(&cfg).unwrap_or(0);
        let _ = std::fs::write(Self::oom_base_file(launch), base.to_string());
        let pid = self
            .rt
            .start(
                &cfg,
                Stdio {
                    stdin: Some(stdio.stdin),
                    stdout: Some(stdio.stdout),
                    stderr: Some(stdio.stderr),
                },
            )
            .map_err(io_err)?;
        u32::try_from(pid.as_raw()).map_err(io::Error::other)
    }

    fn kill(&self, launch: &Launch, pid: u32, signal: Signal) -> io::Result<()> {
        let pid = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
        self.rt.kill(pid, signal).map_err(io_err)?;
        if signal == Signal::SIGKILL {
            if let Ok(cfg) = Self::loaded(launch) {
                self.rt.kill_all(&cfg, signal).map_err(io_err)?;
            }
        }
        Ok(())
    }

    fn delete(&self, launch: &Launch) -> io::Result<()> {
        let cfg = match Self::loaded(launch) {
            Ok(cfg) => cfg,
            Err(_) => self.config(launch).map_err(io_err)?,
        };
        self.rt.delete(&cfg).map_err(io_err)?;
        // The pod goes with its last container.
        if !pod_in_use(launch) {
            self.rt
                .remove_pod(&launch.project, &launch.pod)
                .map_err(io_err)?;
        }
        Ok(())
    }

    fn exec(
        &self,
        launch: &Launch,
        pid: u32,
        argv: &[String],
        env: &BTreeMap<String, String>,
        stdio: ContainerStdio,
    ) -> io::Result<u32> {
        let mut cmd = std::process::Command::new(self.rt.init_exe());
        cmd.arg("init")
            .arg("enter")
            .arg(Self::dir(launch))
            .arg(pid.to_string());
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg("--")
            .args(argv)
            .env_clear()
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        // The caller reaps it by pid; dropping `Child` neither waits nor kills.
        Ok(cmd.spawn()?.id())
    }

    fn oom_kills(&self, launch: &Launch) -> u64 {
        // The shim compares the counter before start and after exit.
        Self::loaded(launch)
            .ok()
            .and_then(|cfg| self.rt.oom_kills(&cfg).ok())
            .unwrap_or(0)
    }
}

/// Whether another container of the pod still has a runtime dir: launch dirs of one project
/// share a parent, and each keeps its runtime config under `runtime/`.
fn pod_in_use(launch: &Launch) -> bool {
    let Some(parent) = launch.dir.parent() else {
        return false;
    };
    std::fs::read_dir(parent)
        .map(|entries| {
            entries.flatten().any(|e| {
                e.path() != launch.dir
                    && Runtime::load(&e.path().join("runtime"))
                        .map(|c| c.project == launch.project && c.pod == launch.pod)
                        .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}
