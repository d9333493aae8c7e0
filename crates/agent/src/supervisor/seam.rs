//! The supervisor's two seams to the rest of the agent: [`ContainerRuntime`] (how a container's
//! process is created, started, signalled, entered and deleted) and [`ImageSource`] (how an image
//! reference becomes a config and layer directories), plus [`Launch`], everything a runtime needs
//! to run one container.
//!
//! The supervisor knows nothing about namespaces, cgroups or registries. It ships with one real,
//! deliberately unisolated runtime, [`ProcessRuntime`] (the container's command as a plain child
//! process of the shim), and [`HostImages`] (no layers: commands come from the host), so that
//! supervision is tested on real processes while the isolating runtime and the image store are
//! built elsewhere.
//!
//! **Plugging in the isolating runtime** (`crate::runtime`): implement [`ContainerRuntime`] for it,
//! give it a [`name`](ContainerRuntime::name), and add it to [`runtime_for`] — the shim is a
//! separate process that finds its runtime by the name recorded in `launch.json`. (Done for
//! `crate::runtime`: see [`super::isolated`].) Then construct
//! the [`Supervisor`](super::Supervisor) with it. **Plugging in the image store** (`crate::image`):
//! implement [`ImageSource`] and pass it to the supervisor.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::proto::{ContainerSpec, Healthcheck, RegistryAuth};

/// Everything a runtime needs to run one container, resolved by the supervisor. Written to
/// `<container dir>/launch.json` (never with secret contents: secrets are files on a tmpfs,
/// referenced by [`ResolvedMount`]s) so that the shim, a separate process, can read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// Unique on the host: `<project>.<pod>.<service>-<replica>`; usable as a cgroup name.
    pub id: String,
    pub project: String,
    pub pod: String,
    pub service: String,
    pub replica: u32,
    /// The container's state directory (logs, status files).
    pub dir: PathBuf,
    /// The process to run: entrypoint + command, image config overridden by the compose file.
    pub argv: Vec<String>,
    /// The environment: image config's, then the compose file's (with a default `PATH`).
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// The pod's hostname.
    pub hostname: String,
    /// Image layer directories, lowest first (empty with [`HostImages`]).
    pub layers: Vec<PathBuf>,
    /// Volumes, binds, tmpfs, secrets and configs, with host paths resolved.
    pub mounts: Vec<ResolvedMount>,
    /// The compose-level spec (with `files` contents removed) for everything else the runtime
    /// honours: capabilities, sysctls, ulimits, resources, read_only, privileged.
    pub spec: ContainerSpec,
    /// Which [`ContainerRuntime`] the shim uses, by [`ContainerRuntime::name`].
    pub runtime: String,
    /// The agent's state root (runtimes keep their own state under it).
    #[serde(default)]
    pub state_root: PathBuf,
    /// Log rotation: bytes per file and number of files kept (the current one included).
    pub log_max_bytes: u64,
    pub log_max_files: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResolvedMount {
    /// A host file or directory (named volume, bind, secret or config file) at `target`.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

/// The stdio a runtime gives the container's process; the shim holds the other ends.
#[derive(Debug)]
pub struct ContainerStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// How the supervisor drives containers. Implementations must be cheap to call from both the
/// daemon (threaded, async) and the shim (single-threaded, no async runtime).
pub trait ContainerRuntime: Send + Sync {
    /// The name recorded in `launch.json` and looked up by [`runtime_for`] in the shim.
    fn name(&self) -> &'static str;

    /// In the daemon, before any container of the pod is created: the pod's sandbox (network,
    /// uts and ipc namespaces with `hostname`). Idempotent.
    fn create_pod(&self, _project: &str, _pod: &str, _hostname: &str) -> io::Result<()> {
        Ok(())
    }

    /// [`create_pod`](Self::create_pod) with the host's network namespace as the pod's
    /// (compose `network_mode: host`).
    fn create_host_network_pod(
        &self,
        _project: &str,
        _pod: &str,
        _hostname: &str,
    ) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the {} runtime cannot run a pod in the host's network namespace",
                self.name()
            ),
        ))
    }

    /// The pod's network namespace file, where the pod network puts its veth; `None` for a
    /// runtime without one (pods then get no fleet network).
    fn pod_netns(&self, _project: &str, _pod: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// In the daemon, after every container of the pod was deleted: its sandbox.
    fn remove_pod(&self, _project: &str, _pod: &str) -> io::Result<()> {
        Ok(())
    }

    /// In the daemon, before the shim is spawned: prepare what the container needs (rootfs,
    /// cgroup). Idempotent: called again before every restart.
    fn create(&self, launch: &Launch) -> io::Result<()>;

    /// In the shim (single-threaded, before any async runtime; SIGCHLD is not yet blocked): start
    /// the container's process with `stdio` and return its pid in the host's pid namespace. The
    /// shim is a child subreaper and reaps that pid, so it must be the shim's child or
    /// descendant.
    fn start(&self, launch: &Launch, stdio: ContainerStdio) -> io::Result<u32>;

    /// Sends `signal` to the container's main process `pid`; SIGKILL goes to all its processes
    /// where the runtime can.
    fn kill(&self, launch: &Launch, pid: u32, signal: Signal) -> io::Result<()>;

    /// In the daemon, after the process exited: release what `create` set up (not the volumes).
    fn delete(&self, launch: &Launch) -> io::Result<()>;

    /// In the daemon (threaded: an isolating runtime must enter the container from a fresh
    /// process, never by `setns` here): runs `argv` with extra `env` inside the running container
    /// whose main process is `pid`, with `stdio`. Returns the pid of a **child of the caller**
    /// that exits with the command's exit code (128 + signal when killed) and that the caller
    /// reaps; killing it kills the command. Used by health checks and `Exec`.
    fn exec(
        &self,
        launch: &Launch,
        pid: u32,
        argv: &[String],
        env: &BTreeMap<String, String>,
        stdio: ContainerStdio,
    ) -> io::Result<u32>;

    /// How many times the kernel OOM-killed a process of this container so far (its cgroup's
    /// counter). The shim reads it before start and after exit to record the OOM flag.
    fn oom_kills(&self, _launch: &Launch) -> u64 {
        0
    }
}

/// The runtime the shim (a separate process) uses for `launch`, by the name recorded in it.
/// Every [`ContainerRuntime`] must be listed here.
pub fn runtime_for(launch: &Launch) -> io::Result<Arc<dyn ContainerRuntime>> {
    match launch.runtime.as_str() {
        ProcessRuntime::NAME => Ok(Arc::new(ProcessRuntime)),
        super::isolated::IsolatedRuntime::NAME => {
            let exe = std::env::current_exe()?;
            Ok(Arc::new(super::isolated::IsolatedRuntime::new(
                &launch.state_root,
                &exe,
            )?))
        }
        other => Err(io::Error::other(format!(
            "this agent has no container runtime named {other:?}"
        ))),
    }
}

/// An image's config: the parts of the OCI image config the supervisor applies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub stop_signal: Option<String>,
    /// The image's `HEALTHCHECK`, used when the compose file sets none.
    pub healthcheck: Option<Healthcheck>,
}

/// An image present on the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PulledImage {
    /// The manifest digest, `sha256:…`.
    pub digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where images come from: the image store pulls (once, verified) and unpacks.
pub trait ImageSource: Send + Sync {
    /// Makes `reference` present on the host. `auth` maps registry hosts to credentials (the
    /// source picks the reference's own; never logged or written to disk); `insecure` lists the
    /// registries reached over plain http.
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        auth: &'a BTreeMap<String, RegistryAuth>,
        insecure: &'a [String],
    ) -> BoxFuture<'a, io::Result<PulledImage>>;
}

/// The agent's image store (`crate::image`) as the supervisor's image source.
impl ImageSource for crate::image::ImageStore {
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        auth: &'a BTreeMap<String, RegistryAuth>,
        insecure: &'a [String],
    ) -> BoxFuture<'a, io::Result<PulledImage>> {
        Box::pin(async move {
            let registry = crate::image::ImageRef::parse(reference)
                .map_err(io::Error::other)?
                .registry()
                .to_string();
            let image =
                crate::image::ImageStore::pull(self, reference, auth.get(&registry), insecure)
                    .await
                    .map_err(io::Error::other)?;
            let c = image.config;
            let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64).unwrap_or(0);
            Ok(PulledImage {
                digest: image.manifest_digest,
                config: ImageConfig {
                    entrypoint: c.entrypoint,
                    cmd: c.cmd,
                    env: c.env,
                    user: c.user,
                    working_dir: c.working_dir,
                    stop_signal: c.stop_signal,
                    healthcheck: c.healthcheck.map(|h| Healthcheck {
                        test: h.test,
                        interval_ms: ms(h.interval),
                        timeout_ms: ms(h.timeout),
                        retries: h.retries.unwrap_or(0),
                        start_period_ms: ms(h.start_period),
                        start_interval_ms: ms(h.start_interval),
                    }),
                },
                layers: image.layer_dirs,
            })
        })
    }
}

/// No image store: every image is the host itself (no layers, empty config). For running the
/// supervisor with [`ProcessRuntime`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HostImages;

impl ImageSource for HostImages {
    fn pull<'a>(
        &'a self,
        _reference: &'a str,
        _auth: &'a BTreeMap<String, RegistryAuth>,
        _insecure: &'a [String],
    ) -> BoxFuture<'a, io::Result<PulledImage>> {
        Box::pin(async {
            Ok(PulledImage {
                digest: "host".into(),
                ..PulledImage::default()
            })
        })
    }
}

/// Runs a container's command as a plain child of the shim, in its own process group, with the
/// launch's argv, env and working directory: real processes, real exit statuses, real stdio, and
/// **no isolation** (no namespaces, cgroups, rootfs or mounts). For tests and for hosts where
/// supervision is wanted without isolation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRuntime;

impl ProcessRuntime {
    pub const NAME: &'static str = "process";

    fn command(
        argv: &[String],
        env: &BTreeMap<String, String>,
        working_dir: Option<&str>,
    ) -> io::Result<std::process::Command> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::other("the container has no command to run"))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).env_clear().envs(env);
        if let Some(dir) = working_dir.filter(|d| Path::new(d).is_dir()) {
            cmd.current_dir(dir);
        }
        Ok(cmd)
    }
}

impl ContainerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn create(&self, _launch: &Launch) -> io::Result<()> {
        Ok(())
    }

    fn start(&self, launch: &Launch, stdio: ContainerStdio) -> io::Result<u32> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Self::command(&launch.argv, &launch.env, launch.working_dir.as_deref())?;
        // Its own process group, so that `kill` reaches what it forked, as a pid namespace would.
        cmd.process_group(0)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "starting {:?}: {e}",
                    launch.argv.first().map(String::as_str).unwrap_or("")
                ),
            )
        })?;
        // The shim reaps it with waitpid; dropping `Child` neither waits nor kills.
        Ok(child.id())
    }

    fn kill(&self, _launch: &Launch, pid: u32, signal: Signal) -> io::Result<()> {
        let pid = i32::try_from(pid).map_err(io::Error::other)?;
        let group = nix::unistd::Pid::from_raw(-pid);
        match nix::sys::signal::kill(group, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn delete(&self, _launch: &Launch) -> io::Result<()> {
        Ok(())
    }

    fn exec(
        &self,
        launch: &Launch,
        _pid: u32,
        argv: &[String],
        env: &BTreeMap<String, String>,
        stdio: ContainerStdio,
    ) -> io::Result<u32> {
        use std::os::unix::process::CommandExt;
        let mut all = launch.env.clone();
        all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut cmd = Self::command(argv, &all, launch.working_dir.as_deref())?;
        cmd.process_group(0)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        // The caller reaps it by pid; dropping `Child` neither waits nor kills.
        Ok(cmd.spawn()?.id())
    }
}

/// The default `PATH` when neither the image nor the compose file sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process to run, by Docker's rules: a compose `entrypoint` replaces the image's entrypoint
/// *and* discards the image's cmd; a compose `command` replaces the image's cmd.
pub fn resolve_argv(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let (entrypoint, cmd) = match &spec.entrypoint {
        Some(ep) => (ep.clone(), spec.command.clone().unwrap_or_default()),
        None => (
            image.entrypoint.clone().unwrap_or_default(),
            spec.command
                .clone()
                .or_else(|| image.cmd.clone())
                .unwrap_or_default(),
        ),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The environment: the image's, overridden by the compose file's, with a default `PATH`.
pub fn resolve_env(spec: &ContainerSpec, image: &ImageConfig) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = image
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(v(&["/docker-entrypoint.sh"])),
            cmd: Some(v(&["nginx", "-g", "daemon off;"])),
            env: v(&["PATH=/img/bin", "A=image"]),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn image_entrypoint_and_cmd_by_default() {
        assert_eq!(
            resolve_argv(&ContainerSpec::default(), &image()),
            v(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
    }

    #[test]
    fn command_replaces_only_the_cmd() {
        let spec = ContainerSpec {
            command: Some(v(&["sh"])),
            ..ContainerSpec::default()
        };
        assert_eq!(
            resolve_argv(&spec, &image()),
            v(&["/docker-entrypoint.sh", "sh"])
        );
    }

    #[test]
    fn entrypoint_discards_the_image_cmd() {
        let spec = ContainerSpec {
            entrypoint: Some(v(&["/bin/true"])),
            ..ContainerSpec::default()
        };
        assert_eq!(resolve_argv(&spec, &image()), v(&["/bin/true"]));
    }

    #[test]
    fn compose_env_overrides_image_env_and_path_defaults() {
        let mut spec = ContainerSpec::default();
        spec.env.insert("A".into(), "compose".into());
        let env = resolve_env(&spec, &image());
        assert_eq!(env["A"], "compose");
        assert_eq!(env["PATH"], "/img/bin");
        let env = resolve_env(&spec, &ImageConfig::default());
        assert_eq!(env["PATH"], DEFAULT_PATH);
    }
}
