//! The isolating runtime (`crate::runtime`) behind the supervisor's [`ContainerRuntime`] seam:
//! pods are its sandboxes, containers its namespaced, cgroup-limited processes.
//!
//! The supervisor resolves argv, env, mounts (named volumes, secrets, configs) itself and hands
//! them over as a finished spec: entrypoint = the resolved argv, no command, no image config
//! beyond the layers, mounts replaced by the resolved ones. The runtime's `config.json` (written by
//! `create`) is what the shim and later calls load back.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::seam::{ContainerRuntime, ContainerStdio, Launch, ResolvedMount};
use crate::proto::ContainerSpec;
use crate::runtime::{self, ContainerConfig, ExecProcess, Runtime, RuntimeMount};

/// [`Runtime`] as a [`ContainerRuntime`].
pub struct IsolatedRuntime {
    rt: Runtime,
    state_root: PathBuf,
}

impl IsolatedRuntime {
    pub const NAME: &'static str = "isolated";

    /// A runtime keeping its state under the agent's state root; `init_exe` is the agent binary
    /// (the daemon and the shim pass their own executable; tests the built agent).
    pub fn new(state_root: &Path, init_exe: &Path) -> io::Result<IsolatedRuntime> {
        let rt = Runtime::new(state_root)
            .map_err(io::Error::other)?
            .with_init_exe(init_exe);
        Ok(IsolatedRuntime {
            rt,
            state_root: state_root.to_path_buf(),
        })
    }

    fn config(&self, launch: &Launch) -> io::Result<ContainerConfig> {
        Runtime::load(
            &self
                .rt
                .container_dir(&launch.project, &launch.pod, &launch.service),
        )
        .map_err(io::Error::other)
    }
}

fn pid(pid: u32) -> io::Result<Pid> {
    Ok(Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?))
}

fn stdio(s: ContainerStdio) -> runtime::Stdio {
    runtime::Stdio {
        stdin: Some(s.stdin),
        stdout: Some(s.stdout),
        stderr: Some(s.stderr),
    }
}

impl ContainerRuntime for IsolatedRuntime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn create_pod(&self, project: &str, pod: &str, hostname: &str) -> io::Result<()> {
        self.rt
            .create_pod(project, pod, hostname)
            .map(|_| ())
            .map_err(io::Error::other)
    }

    fn create_host_network_pod(&self, project: &str, pod: &str, hostname: &str) -> io::Result<()> {
        self.rt
            .create_host_network_pod(project, pod, hostname)
            .map(|_| ())
            .map_err(io::Error::other)
    }

    fn pod_netns(&self, project: &str, pod: &str) -> Option<PathBuf> {
        Some(runtime::pod::namespaces_in(&self.rt.pod_dir(project, pod)).net)
    }

    fn remove_pod(&self, project: &str, pod: &str) -> io::Result<()> {
        self.rt.remove_pod(project, pod).map_err(io::Error::other)
    }

    fn create(&self, launch: &Launch) -> io::Result<()> {
        let spec = ContainerSpec {
            entrypoint: Some(launch.argv.clone()),
            command: Some(Vec::new()),
            env: launch.env.clone(),
            user: launch.user.clone(),
            working_dir: launch.working_dir.clone(),
            mounts: Vec::new(),
            ..launch.spec.clone()
        };
        let image = runtime::ImageConfig {
            layers: launch.layers.clone(),
            ..runtime::ImageConfig::default()
        };
        // Named volumes are already resolved into binds by the supervisor.
        let volumes_dir = self.state_root.join("projects").join(&launch.project);
        let placement = self.rt.placement(
            &launch.project,
            &launch.pod,
            &launch.hostname,
            &launch.service,
            &volumes_dir,
        );
        let mut cfg = ContainerConfig::build(&spec, &image, placement).map_err(io::Error::other)?;
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
        self.rt.create(&cfg).map_err(io::Error::other)
    }

    fn start(&self, launch: &Launch, s: ContainerStdio) -> io::Result<u32> {
        let cfg = self.config(launch)?;
        let pid = self.rt.start(&cfg, stdio(s)).map_err(io::Error::other)?;
        u32::try_from(pid.as_raw()).map_err(io::Error::other)
    }

    fn kill(&self, launch: &Launch, main: u32, signal: Signal) -> io::Result<()> {
        if signal == Signal::SIGKILL {
            let cfg = self.config(launch)?;
            self.rt.kill_all(&cfg, signal).map_err(io::Error::other)
        } else {
            self.rt.kill(pid(main)?, signal).map_err(io::Error::other)
        }
    }

    fn delete(&self, launch: &Launch) -> io::Result<()> {
        let cfg = self.config(launch)?;
        self.rt.delete(&cfg).map_err(io::Error::other)
    }

    fn exec(
        &self,
        launch: &Launch,
        main: u32,
        argv: &[String],
        env: &BTreeMap<String, String>,
        s: ContainerStdio,
    ) -> io::Result<u32> {
        let cfg = self.config(launch)?;
        let process = ExecProcess {
            args: argv.to_vec(),
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            user: None,
            cwd: None,
        };
        let waiter = self
            .rt
            .exec(&cfg, pid(main)?, &process, stdio(s))
            .map_err(io::Error::other)?;
        u32::try_from(waiter.as_raw()).map_err(io::Error::other)
    }

    fn oom_kills(&self, launch: &Launch) -> u64 {
        self.config(launch)
            .and_then(|cfg| self.rt.oom_kills(&cfg).map_err(io::Error::other))
            .unwrap_or(0)
    }
}
