//! Supervision: the daemon's side of pods — reconcile `Apply`, restart policies, health checks,
//! logs, exec, removal — and the per-container shim that keeps containers alive without it.
//!
//! Map:
//! - [`seam`]: the traits the rest of the agent plugs in ([`ContainerRuntime`], [`ImageSource`]) and
//!   the plain-process runtime used by tests.
//! - [`state`]: on-disk layout, atomic writes, tolerant reads.
//! - [`diff`], [`restart`], [`health`]: pure logic (pod diff, restart decisions and backoff,
//!   health state machine), unit-tested without processes or clocks.
//! - [`shim`]: `compose-fleet-agent shim`, the single-threaded per-container holder.
//! - [`logfile`]: the shim's rotated JSON-lines logs and their reader.
//! - [`files`]: named volumes, secrets (tmpfs, 0400) and configs.
//!
//! The daemon's dispatch calls [`Supervisor::handle`] with each request frame (all but `Hello`)
//! and forwards the frames it yields. The supervisor knows nothing of sockets, SSH or namespaces.
//!
//! Each container has one tokio task that starts a shim (or adopts a running one), waits for the
//! shim to exit (a pidfd: the shim is not our child), reads `exit.json`, and asks the restart
//! policy what next. Killing the daemon loses only these tasks: shims and containers keep
//! running, and [`Supervisor::open`] re-adopts them from their `shim.json` (same pid, same start
//! time) without restarting anything.

pub mod diff;
pub mod files;
pub mod health;
pub mod isolated;
pub mod logfile;
pub mod restart;
pub mod seam;
pub mod shim;
pub mod state;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use isolated::IsolatedRuntime;
pub use seam::{ContainerRuntime, HostImages, ImageSource, Launch, ProcessRuntime};

use crate::proto::{
    AgentError, ApplyPodsRequest, ApplyReport, ApplyRequest, ContainerStatus, ErrorKind,
    ExecRequest, LogLine, LogsRequest, PodSpec, PodStatus, Request, RequestFrame, Response,
    ResponseFrame, StatusReport, Stream,
};
use health::{Health, HealthStatus, Probe};
use restart::{Decision, Exit, RestartState};
use shim::{ExitRecord, ShimRecord, EXIT_FILE, LAUNCH_FILE, SHIM_FILE};
use state::{log, read_json, unix_millis, write_json, StateRoot};

/// How long a container gets between its stop signal and SIGKILL unless the spec says.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
const OBSERVED_FILE: &str = "observed.json";

/// What the supervisor is built from. The daemon passes the real runtime and image store; tests
/// pass [`ProcessRuntime`] and [`HostImages`].
pub struct SupervisorConfig {
    /// The agent's state dir ([`state::DEFAULT_ROOT`] on a host).
    pub state_root: PathBuf,
    /// The agent binary, run as `<shim_exe> shim <dir>` (the daemon passes its own executable).
    pub shim_exe: PathBuf,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub images: Arc<dyn ImageSource>,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// The host's pod network; `None` leaves pods with loopback only (tests, plain processes).
    pub network: Option<Arc<crate::network::Network>>,
}

impl SupervisorConfig {
    pub fn new(
        state_root: impl Into<PathBuf>,
        shim_exe: impl Into<PathBuf>,
        runtime: Arc<dyn ContainerRuntime>,
        images: Arc<dyn ImageSource>,
    ) -> Self {
        SupervisorConfig {
            state_root: state_root.into(),
            shim_exe: shim_exe.into(),
            runtime,
            images,
            log_max_bytes: logfile::DEFAULT_MAX_BYTES,
            log_max_files: logfile::DEFAULT_MAX_FILES,
            network: None,
        }
    }
}

/// The supervisor; cheap to clone (one shared state).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SupervisorConfig,
    state: StateRoot,
    /// One lock for every project: Apply and Remove are rare and must not interleave.
    projects: tokio::sync::Mutex<BTreeMap<String, ProjectRt>>,
    /// `ApplyPods` reads the stored desired set and applies it changed: one at a time, so that
    /// concurrent ones do not undo each other.
    apply_pods: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct ProjectRt {
    pods: BTreeMap<String, PodRt>,
}

struct PodRt {
    spec_hash: String,
    containers: Vec<Arc<ContainerRt>>,
}

struct ContainerRt {
    launch: Launch,
    obs: Mutex<Observed>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A container's observed state, persisted in its directory as `observed.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Observed {
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub restart: RestartState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
    /// Why the last start failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    #[default]
    Created,
    Running,
    Restarting,
    Exited,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Restarting => "restarting",
            RunState::Exited => "exited",
            RunState::Failed => "failed",
        }
    }
}

/// The desired state of a project as stored (secret contents removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
struct DesiredProject {
    pods: Vec<PodSpec>,
}

/// A request failure, sent back as an [`AgentError`] frame.
#[derive(Debug)]
pub struct Failure(pub AgentError);

impl Failure {
    fn bad(message: impl Into<String>) -> Failure {
        Failure(AgentError {
            kind: ErrorKind::BadRequest,
            message: message.into(),
            causes: Vec::new(),
        })
    }

    fn host(message: impl Into<String>, cause: impl std::fmt::Display) -> Failure {
        Failure(AgentError {
            kind: ErrorKind::Host,
            message: message.into(),
            causes: vec![cause.to_string()],
        })
    }
}

impl Supervisor {
    /// Opens the state dir and re-adopts what it describes: running shims are watched again
    /// (nothing restarted), containers that exited while no daemon ran get their restart policy,
    /// unreadable state files are moved aside. Never fails because of the state's content.
    pub async fn open(cfg: SupervisorConfig) -> io::Result<Supervisor> {
        let state = StateRoot::new(&cfg.state_root);
        std::fs::create_dir_all(state.projects()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating the state dir {}: {e}", state.projects().display()),
            )
        })?;
        let sup = Supervisor {
            inner: Arc::new(Inner {
                cfg,
                state,
                projects: tokio::sync::Mutex::new(BTreeMap::new()),
                apply_pods: tokio::sync::Mutex::new(()),
            }),
        };
        sup.readopt().await;
        Ok(sup)
    }

    /// Serves one request, returning its reply frames in order; the last one has `more: false`.
    /// Dropping the receiver cancels a stream (`Logs` with `follow`).
    pub fn handle(&self, frame: RequestFrame) -> mpsc::Receiver<ResponseFrame> {
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move { this.serve(frame, tx).await });
        rx
    }

    /// **The daemon's seam**: answers one request (anything but `Hello`) through the daemon's
    /// [`Replies`](crate::daemon::Replies). In `daemon::dispatch`:
    /// `r @ (Request::Apply(_) | Request::Status { .. } | Request::Logs(_) | Request::Exec(_) |
    /// Request::Remove { .. }) => ctx.supervisor.dispatch(r, replies).await`.
    /// A client that goes away ends a followed log stream.
    pub async fn dispatch(&self, request: Request, replies: crate::daemon::Replies) {
        let mut rx = self.handle(RequestFrame { id: 0, request });
        while let Some(frame) = rx.recv().await {
            match (frame.more, frame.ok, frame.err) {
                (true, Some(r), _) => {
                    if !replies.more(r).await {
                        return; // dropping `rx` cancels the stream
                    }
                }
                (true, None, _) => {}
                (false, Some(r), _) => return replies.ok(r).await,
                (false, None, Some(e)) => return replies.err(e).await,
                (false, None, None) => break,
            }
        }
        replies
            .err(AgentError {
                kind: ErrorKind::Host,
                message: "the supervisor ended a request without a reply (a bug)".into(),
                causes: Vec::new(),
            })
            .await
    }

    /// Opens the supervisor the daemon runs: state under `paths.state`, images in the image store
    /// at `<state>/images`, shims from this executable, containers through `runtime`.
    pub async fn for_daemon(
        paths: &crate::store::Paths,
        runtime: Arc<dyn ContainerRuntime>,
    ) -> io::Result<Supervisor> {
        let images =
            crate::image::ImageStore::open(paths.state.join("images")).map_err(io::Error::other)?;
        let exe = std::env::current_exe()?;
        let mut cfg = SupervisorConfig::new(&paths.state, exe, runtime, Arc::new(images));
        cfg.network = Some(Arc::new(crate::network::Network::open(
            &paths.state,
            Arc::new(crate::network::kernel::Netlink),
        )?));
        Supervisor::open(cfg).await
    }

    /// Like [`handle`](Self::handle), sending into a channel the caller owns.
    pub async fn serve(&self, frame: RequestFrame, tx: mpsc::Sender<ResponseFrame>) {
        let id = frame.id;
        let result = match frame.request {
            Request::Hello { .. } => Err(Failure::bad(
                "hello is answered by the daemon's dispatch, not the supervisor",
            )),
            Request::Apply(req) => self.apply(req).await.map(Response::Applied),
            Request::ApplyPods(req) => self.apply_pods(req).await.map(Response::Applied),
            Request::Status { project } => {
                Ok(Response::Status(self.status(project.as_deref()).await))
            }
            Request::Logs(req) => self.logs(id, req, &tx).await,
            Request::Exec(req) => self.exec(id, req, &tx).await,
            Request::Remove { project, volumes } => self
                .remove(&project, volumes)
                .await
                .map(|pods| Response::Removed { pods }),
        };
        let last = match result {
            Ok(r) => ResponseFrame::ok(id, r),
            Err(Failure(e)) => ResponseFrame::err(id, e),
        };
        let _ = tx.send(last).await;
    }

    /// Stops supervising without stopping any container, as a daemon exit or upgrade does:
    /// the shims keep the containers, and the next [`open`](Self::open) re-adopts them.
    pub async fn detach(&self) {
        let projects = self.inner.projects.lock().await;
        for c in projects
            .values()
            .flat_map(|p| p.pods.values())
            .flat_map(|p| &p.containers)
        {
            if let Some(task) = c.task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Reconciles a project to exactly `req.pods`.
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyReport, Failure> {
        let inner = &self.inner;
        validate(&req)?;
        let warnings = match (&inner.cfg.network, &req.network) {
            (Some(network), Some(host)) => network
                .configure(host)
                .map_err(|e| Failure::host("configuring the pod network", e))?,
            _ => Vec::new(),
        };
        // Images first, and before taking the lock: a pull can take minutes and Status must stay
        // answerable meanwhile; a pull that fails must not have stopped anything.
        let present: BTreeMap<String, String> = {
            let projects = inner.projects.lock().await;
            projects
                .get(&req.project)
                .map(|p| {
                    p.pods
                        .iter()
                        .map(|(n, pod)| (n.clone(), pod.spec_hash.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut images = BTreeMap::new();
        let changed = req
            .pods
            .iter()
            .filter(|p| present.get(&p.name) != Some(&p.spec_hash));
        self.pull_missing(&req, changed, &mut images).await?;

        let mut projects = inner.projects.lock().await;
        let project = projects.entry(req.project.clone()).or_default();
        let d = diff::diff_pods(
            req.pods
                .iter()
                .map(|p| (p.name.as_str(), p.spec_hash.as_str())),
            project
                .pods
                .iter()
                .map(|(n, p)| (n.as_str(), p.spec_hash.as_str())),
        );
        let starting: Vec<&PodSpec> = req
            .pods
            .iter()
            .filter(|p| d.create.contains(&p.name) || d.replace.contains(&p.name))
            .collect();

        // Another Apply may have changed the project since the pulls: pull what is still missing.
        self.pull_missing(&req, starting.iter().copied(), &mut images)
            .await?;

        // Stop what goes away or is replaced, all at once.
        let mut stopping = Vec::new();
        for name in d.remove.iter().chain(&d.replace) {
            if let Some(pod) = project.pods.remove(name) {
                stopping.push(pod);
            }
        }
        stop_pods(stopping.iter()).await;
        for name in d.remove.iter().chain(&d.replace) {
            remove_pod(inner, &req.project, name);
        }

        let desired = DesiredProject {
            pods: req
                .pods
                .iter()
                .map(|p| PodSpec {
                    containers: p.containers.iter().map(files::strip_secrets).collect(),
                    ..p.clone()
                })
                .collect(),
        };
        write_json(&inner.state.desired(&req.project), &desired).map_err(|e| {
            Failure::host(
                format!("saving the desired state of project {}", req.project),
                e,
            )
        })?;

        for pod in starting {
            let rt = self.prepare_pod(&req.project, pod, &images).map_err(|e| {
                Failure::host(
                    format!("preparing pod {} of project {}", pod.name, req.project),
                    e,
                )
            })?;
            for c in &rt.containers {
                self.spawn_container(c.clone(), Step::Start);
            }
            project.pods.insert(pod.name.clone(), rt);
        }
        Ok(ApplyReport {
            created: d.create,
            replaced: d.replace,
            removed: d.remove,
            unchanged: d.unchanged,
            warnings,
        })
    }

    /// Changes only the pods `req` names: the stored desired set with `req.pods` put in (by name)
    /// and `req.remove` taken out, applied as a whole. Kept pods keep their hash, so nothing else
    /// is touched.
    pub async fn apply_pods(&self, req: ApplyPodsRequest) -> Result<ApplyReport, Failure> {
        if !files::valid_name(&req.project) {
            return Err(Failure::bad(format!(
                "{:?} is not a valid project name",
                req.project
            )));
        }
        let _one = self.inner.apply_pods.lock().await;
        let stored: DesiredProject =
            read_json(&self.inner.state.desired(&req.project)).unwrap_or_default();
        let named: std::collections::BTreeSet<&str> = req
            .pods
            .iter()
            .map(|p| p.name.as_str())
            .chain(req.remove.iter().map(String::as_str))
            .collect();
        let mut pods: Vec<PodSpec> = stored
            .pods
            .into_iter()
            .filter(|p| !named.contains(p.name.as_str()))
            .collect();
        pods.extend(req.pods);
        self.apply(ApplyRequest {
            project: req.project,
            pods,
            registry_auth: req.registry_auth,
            insecure_registries: req.insecure_registries,
            network: None,
        })
        .await
    }

    /// Pulls the images of `pods` not yet in `images`.
    async fn pull_missing<'a>(
        &self,
        req: &ApplyRequest,
        pods: impl Iterator<Item = &'a PodSpec>,
        images: &mut BTreeMap<String, seam::PulledImage>,
    ) -> Result<(), Failure> {
        for c in pods.flat_map(|p| &p.containers) {
            if images.contains_key(&c.image) {
                continue;
            }
            let image = self
                .inner
                .cfg
                .images
                .pull(&c.image, &req.registry_auth, &req.insecure_registries)
                .await
                .map_err(|e| {
                    Failure::host(
                        format!("pulling image {} for service {}", c.image, c.service),
                        e,
                    )
                })?;
            images.insert(c.image.clone(), image);
        }
        Ok(())
    }

    /// Writes a pod's files and launch configs; does not start anything.
    fn prepare_pod(
        &self,
        project: &str,
        pod: &PodSpec,
        images: &BTreeMap<String, seam::PulledImage>,
    ) -> io::Result<PodRt> {
        let inner = &self.inner;
        let pod_dir = inner.state.pod(project, &pod.name);
        std::fs::create_dir_all(&pod_dir)?;
        inner
            .cfg
            .runtime
            .create_pod(project, &pod.name, &pod.hostname)?;
        attach_network(inner, project, pod)?;
        files::mount_secrets_tmpfs(&pod_dir, pod)?;
        let mut containers = Vec::new();
        for spec in &pod.containers {
            let image = images.get(&spec.image).cloned().unwrap_or_default();
            let dir = inner
                .state
                .container(project, &pod.name, &spec.service, spec.replica);
            std::fs::create_dir_all(&dir)?;
            let mut mounts = files::resolve_mounts(&inner.state, project, spec)?;
            mounts.extend(files::write_files(
                &pod_dir,
                &format!("{}-{}", spec.service, spec.replica),
                &spec.files,
            )?);
            let mut stored = files::strip_secrets(spec);
            // The image's STOPSIGNAL and HEALTHCHECK apply when the compose file sets none.
            stored.stop_signal = stored.stop_signal.or(image.config.stop_signal.clone());
            stored.healthcheck = stored.healthcheck.or(image.config.healthcheck.clone());
            let launch = Launch {
                id: format!("{project}.{}.{}-{}", pod.name, spec.service, spec.replica),
                project: project.to_string(),
                pod: pod.name.clone(),
                service: spec.service.clone(),
                replica: spec.replica,
                dir: dir.clone(),
                argv: seam::resolve_argv(spec, &image.config),
                env: seam::resolve_env(spec, &image.config),
                user: spec.user.clone().or(image.config.user.clone()),
                working_dir: spec
                    .working_dir
                    .clone()
                    .or(image.config.working_dir.clone()),
                hostname: pod.hostname.clone(),
                layers: image.layers.clone(),
                mounts,
                spec: stored,
                runtime: inner.cfg.runtime.name().to_string(),
                state_root: inner.state.root().to_path_buf(),
                log_max_bytes: inner.cfg.log_max_bytes,
                log_max_files: inner.cfg.log_max_files,
            };
            write_json(&dir.join(LAUNCH_FILE), &launch)?;
            let _ = std::fs::remove_file(dir.join(OBSERVED_FILE));
            containers.push(ContainerRt::new(launch, Observed::default()));
        }
        Ok(PodRt {
            spec_hash: pod.spec_hash.clone(),
            containers,
        })
    }

    /// Observed state of one project, or of all.
    pub async fn status(&self, project: Option<&str>) -> StatusReport {
        let projects = self.inner.projects.lock().await;
        let mut pods = Vec::new();
        for (pname, p) in projects.iter() {
            if project.is_some_and(|want| want != pname) {
                continue;
            }
            for (name, pod) in &p.pods {
                pods.push(PodStatus {
                    project: pname.clone(),
                    name: name.clone(),
                    spec_hash: pod.spec_hash.clone(),
                    ip: self
                        .inner
                        .cfg
                        .network
                        .as_ref()
                        .and_then(|n| n.address_of(pname, name))
                        .map(|ip| ip.to_string()),
                    containers: pod.containers.iter().map(|c| c.status()).collect(),
                });
            }
        }
        StatusReport { pods }
    }

    /// Streams log lines: each container's last `tail` lines since `since`, merged by time, then
    /// (with `follow`) new lines until the receiver is dropped.
    async fn logs(
        &self,
        id: u64,
        req: LogsRequest,
        tx: &mpsc::Sender<ResponseFrame>,
    ) -> Result<Response, Failure> {
        let selected = self.containers_of(&req.project, &req.services).await?;
        let since_ms = req.since.map(|s| s.saturating_mul(1000)).unwrap_or(0);
        let mut all = Vec::new();
        let mut cursors = Vec::new();
        for c in &selected {
            let (records, cursor) = read_logs(&c.launch);
            let mut records: Vec<_> = records
                .into_iter()
                .filter(|r| r.time_ms >= since_ms)
                .collect();
            if let Some(tail) = req.tail {
                let skip = records.len().saturating_sub(tail as usize);
                records.drain(..skip);
            }
            all.extend(records.into_iter().map(|r| log_line(&c.launch, r)));
            cursors.push((c.launch.clone(), cursor));
        }
        all.sort_by_key(|l| l.time_ms);
        for line in all {
            if tx.send(more(id, Response::LogLine(line))).await.is_err() {
                return Ok(Response::End);
            }
        }
        if req.follow {
            let mut followers = Vec::new();
            for (launch, cursor) in cursors {
                let tx = tx.clone();
                followers.push(tokio::spawn(follow_log(id, launch, cursor, since_ms, tx)));
            }
            tx.closed().await;
            for f in followers {
                f.abort();
            }
        }
        Ok(Response::End)
    }

    /// Runs a command in a running container, streaming its output, then its exit code.
    async fn exec(
        &self,
        id: u64,
        req: ExecRequest,
        tx: &mpsc::Sender<ResponseFrame>,
    ) -> Result<Response, Failure> {
        let c = {
            let projects = self.inner.projects.lock().await;
            let pod = projects
                .get(&req.project)
                .and_then(|p| p.pods.get(&req.pod))
                .ok_or_else(|| {
                    Failure::bad(format!(
                        "project {} has no pod {} on this host",
                        req.project, req.pod
                    ))
                })?;
            pod.containers
                .iter()
                .find(|c| c.launch.service == req.service)
                .cloned()
                .ok_or_else(|| {
                    Failure::bad(format!("pod {} has no service {}", req.pod, req.service))
                })?
        };
        let pid = c.running_pid().ok_or_else(|| {
            Failure::bad(format!(
                "service {} of pod {} is not running; see `ps` for its state",
                req.service, req.pod
            ))
        })?;
        if req.command.is_empty() {
            return Err(Failure::bad("exec needs a command"));
        }
        let child =
            start_exec(&self.inner, &c.launch, pid, &req.command, &req.env, true).map_err(|e| {
                Failure::bad(format!(
                    "running {:?} in service {} of pod {}: {e}",
                    req.command[0], req.service, req.pod
                ))
            })?;
        let out = child
            .stdout
            .map(|o| pump(id, Stream::Stdout, o, tx.clone()));
        let err = child
            .stderr
            .map(|e| pump(id, Stream::Stderr, e, tx.clone()));
        let code = wait_child(child.pid).await.map_err(|e| {
            Failure::host(format!("waiting for exec in service {}", req.service), e)
        })?;
        if let Some(o) = out {
            let _ = o.await;
        }
        if let Some(e) = err {
            let _ = e.await;
        }
        Ok(Response::ExecExit { code })
    }
    /// Stops and deletes a project's pods (and its named volumes with `volumes`).
    pub async fn remove(&self, project: &str, volumes: bool) -> Result<Vec<String>, Failure> {
        if !files::valid_name(project) {
            return Err(Failure::bad(format!(
                "{project:?} is not a valid project name"
            )));
        }
        let inner = &self.inner;
        let mut projects = inner.projects.lock().await;
        let rt = projects.remove(project).unwrap_or_default();
        stop_pods(rt.pods.values()).await;
        let names: Vec<String> = rt.pods.keys().cloned().collect();
        let pods_dir = inner.state.project(project).join("pods");
        for name in state::list_dirs(&pods_dir) {
            remove_pod(inner, project, &name);
        }
        let _ = std::fs::remove_dir_all(&pods_dir);
        let _ = std::fs::remove_file(inner.state.desired(project));
        if volumes {
            let _ = std::fs::remove_dir_all(inner.state.project(project));
        }
        Ok(names)
    }

    async fn containers_of(
        &self,
        project: &str,
        services: &[String],
    ) -> Result<Vec<Arc<ContainerRt>>, Failure> {
        let projects = self.inner.projects.lock().await;
        let p = projects
            .get(project)
            .ok_or_else(|| Failure::bad(format!("no project {project} on this host")))?;
        Ok(p.pods
            .values()
            .flat_map(|pod| &pod.containers)
            .filter(|c| services.is_empty() || services.contains(&c.launch.service))
            .cloned()
            .collect())
    }

    /// Rebuilds the in-memory view from disk and re-attaches to every container.
    async fn readopt(&self) {
        let inner = &self.inner;
        let mut projects = inner.projects.lock().await;
        for pname in inner.state.project_names() {
            let Some(desired) = read_json::<DesiredProject>(&inner.state.desired(&pname)) else {
                continue;
            };
            let mut rt = ProjectRt::default();
            for pod in desired.pods {
                let mut containers = Vec::new();
                for spec in &pod.containers {
                    let dir = inner
                        .state
                        .container(&pname, &pod.name, &spec.service, spec.replica);
                    let Some(launch) = read_json::<Launch>(&dir.join(LAUNCH_FILE)) else {
                        log(&format!(
                            "project {pname} pod {}: {} is missing; the pod will be recreated on the next apply",
                            pod.name,
                            dir.join(LAUNCH_FILE).display()
                        ));
                        continue;
                    };
                    let mut obs: Observed = read_json(&dir.join(OBSERVED_FILE)).unwrap_or_default();
                    let step = self.adopt_step(&launch, &obs);
                    if let Some(Step::Watch(rec)) = &step {
                        // Known at once, so that a Status right after start is already right.
                        obs.state = RunState::Running;
                        obs.pid = Some(rec.pid);
                        obs.started_at_ms = Some(rec.started_at_ms);
                    }
                    containers.push((ContainerRt::new(launch, obs), step));
                }
                // A pod whose containers could not all be read, or whose secrets tmpfs is gone
                // (a reboot) with nothing running, cannot be restarted as it is: it keeps only
                // what still runs, and an empty spec hash so that the next Apply replaces it.
                let pod_dir = inner.state.pod(&pname, &pod.name);
                let secrets_lost = pod
                    .containers
                    .iter()
                    .flat_map(|c| &c.files)
                    .any(|f| f.secret)
                    && !files::secrets_mounted(&pod_dir)
                    && !containers
                        .iter()
                        .any(|(_, step)| matches!(step, Some(Step::Watch(_))));
                let broken = secrets_lost || containers.len() != pod.containers.len();
                if broken {
                    log(&format!(
                        "project {pname} pod {}: {}; the next apply recreates it",
                        pod.name,
                        if secrets_lost {
                            "its secrets tmpfs is gone"
                        } else {
                            "some of its containers' state is unreadable"
                        }
                    ));
                }
                for (c, step) in &containers {
                    match step {
                        Some(step @ Step::Watch(_)) => self.spawn_container(c.clone(), *step),
                        Some(step) if !broken => self.spawn_container(c.clone(), *step),
                        _ => {}
                    }
                }
                rt.pods.insert(
                    pod.name.clone(),
                    PodRt {
                        spec_hash: if broken {
                            String::new()
                        } else {
                            pod.spec_hash.clone()
                        },
                        containers: containers.into_iter().map(|(c, _)| c).collect(),
                    },
                );
            }
            projects.insert(pname, rt);
        }
    }

    /// What a container's task does after a daemon restart; `None`: nothing (it stays exited).
    fn adopt_step(&self, launch: &Launch, obs: &Observed) -> Option<Step> {
        let shim_rec: Option<ShimRecord> = read_json(&launch.dir.join(SHIM_FILE));
        let exit_rec: Option<ExitRecord> = read_json(&launch.dir.join(EXIT_FILE));
        if let Some(rec) = shim_rec {
            if shim::is_same_process(rec.shim_pid, rec.shim_start) {
                log(&format!("re-adopted {} (pid {})", launch.id, rec.pid));
                return Some(Step::Watch(rec));
            }
        }
        match obs.state {
            RunState::Exited | RunState::Failed => None,
            RunState::Running => match (shim_rec, exit_rec) {
                (Some(rec), Some(exit)) => Some(Step::Exited {
                    started_at_ms: rec.started_at_ms,
                    exit,
                    stopped_by_user: false,
                }),
                (rec, _) => {
                    // The shim died without recording the exit (killed): the container cannot
                    // be supervised any more, so end it and let the policy decide.
                    if let Some(rec) = rec {
                        if shim::is_same_process(rec.pid, rec.pid_start) {
                            let _ = self
                                .inner
                                .cfg
                                .runtime
                                .kill(launch, rec.pid, Signal::SIGKILL);
                        }
                    }
                    log(&format!(
                        "{}: its shim is gone without an exit status",
                        launch.id
                    ));
                    Some(Step::Exited {
                        started_at_ms: rec.map(|r| r.started_at_ms).unwrap_or(0),
                        exit: ExitRecord {
                            exit: Exit::Signal { signal: 9 },
                            finished_at_ms: unix_millis(),
                            oom_killed: false,
                        },
                        stopped_by_user: false,
                    })
                }
            },
            RunState::Created | RunState::Restarting => Some(Step::Start),
        }
    }

    fn spawn_container(&self, c: Arc<ContainerRt>, step: Step) {
        let inner = self.inner.clone();
        let task = tokio::spawn(run_container(inner, c.clone(), step));
        if let Ok(mut t) = c.task.lock() {
            *t = Some(task);
        }
    }
}

impl ContainerRt {
    fn new(launch: Launch, obs: Observed) -> Arc<ContainerRt> {
        let (stop, _) = watch::channel(false);
        Arc::new(ContainerRt {
            launch,
            obs: Mutex::new(obs),
            stop,
            task: Mutex::new(None),
        })
    }

    fn observed(&self) -> Observed {
        self.obs.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Changes the observed state and persists it.
    fn update(&self, f: impl FnOnce(&mut Observed)) {
        let snapshot = match self.obs.lock() {
            Ok(mut o) => {
                f(&mut o);
                o.clone()
            }
            Err(_) => return,
        };
        if let Err(e) = write_json(&self.launch.dir.join(OBSERVED_FILE), &snapshot) {
            log(&format!("{}: {e}", self.launch.id));
        }
    }

    fn running_pid(&self) -> Option<u32> {
        let o = self.observed();
        (o.state == RunState::Running).then_some(o.pid).flatten()
    }

    fn status(&self) -> ContainerStatus {
        let o = self.observed();
        ContainerStatus {
            service: self.launch.service.clone(),
            replica: self.launch.replica,
            state: o.state.as_str().to_string(),
            health: o.health.map(|h| h.as_str().to_string()),
            pid: (o.state == RunState::Running).then_some(o.pid).flatten(),
            exit_code: o.exit.map(Exit::code),
            restarts: o.restart.restarts,
            started_at: o.started_at_ms.map(|ms| ms / 1000),
        }
    }
}

/// Where a container's task starts (fresh, or after a daemon restart).
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Start a shim.
    Start,
    /// A shim runs: wait for it.
    Watch(ShimRecord),
    /// The container exited: apply the policy.
    Exited {
        started_at_ms: u64,
        exit: ExitRecord,
        stopped_by_user: bool,
    },
}

/// One container's life: start, watch, decide, until the policy or a stop ends it.
async fn run_container(inner: Arc<Inner>, c: Arc<ContainerRt>, mut step: Step) {
    let mut stop_rx = c.stop.subscribe();
    loop {
        step = match step {
            Step::Start => {
                if *stop_rx.borrow() {
                    return;
                }
                let started = unix_millis();
                match spawn_shim(&inner, &c.launch).await {
                    Ok(rec) => Step::Watch(rec),
                    Err(e) => {
                        log(&format!("{}: {e}", c.launch.id));
                        c.update(|o| o.error = Some(e.to_string()));
                        Step::Exited {
                            started_at_ms: started,
                            // What a shell reports for a command that cannot run.
                            exit: ExitRecord {
                                exit: Exit::Code { code: 127 },
                                finished_at_ms: unix_millis(),
                                oom_killed: false,
                            },
                            stopped_by_user: false,
                        }
                    }
                }
            }
            Step::Watch(rec) => {
                c.update(|o| {
                    o.state = RunState::Running;
                    o.pid = Some(rec.pid);
                    o.started_at_ms = Some(rec.started_at_ms);
                    o.error = None;
                });
                // Aborted when this run ends, and also when this task itself is aborted.
                let health = probe_of(&c).map(|p| {
                    AbortOnDrop(tokio::spawn(run_health(inner.clone(), c.clone(), p, rec)))
                });
                let stopped_by_user = tokio::select! {
                    _ = wait_exit(rec.shim_pid, rec.shim_start) => false,
                    _ = stop_requested(&mut stop_rx) => {
                        stop_container(&inner, &c.launch, rec).await;
                        true
                    }
                };
                drop(health);
                let exit =
                    read_json::<ExitRecord>(&c.launch.dir.join(EXIT_FILE)).unwrap_or(ExitRecord {
                        exit: Exit::Signal { signal: 9 },
                        finished_at_ms: unix_millis(),
                        oom_killed: false,
                    });
                Step::Exited {
                    started_at_ms: rec.started_at_ms,
                    exit,
                    stopped_by_user,
                }
            }
            Step::Exited {
                started_at_ms,
                exit,
                stopped_by_user,
            } => {
                if let Err(e) = inner.cfg.runtime.delete(&c.launch) {
                    log(&format!("{}: deleting: {e}", c.launch.id));
                }
                let ran_for =
                    Duration::from_millis(exit.finished_at_ms.saturating_sub(started_at_ms));
                let stopped = stopped_by_user || *stop_rx.borrow();
                let mut decision = Decision::Stay;
                c.update(|o| {
                    decision =
                        o.restart
                            .on_exit(&c.launch.spec.restart, exit.exit, ran_for, stopped);
                    o.exit = Some(exit.exit);
                    o.oom_killed = exit.oom_killed;
                    o.health = None;
                    o.state = match decision {
                        Decision::Stay if o.error.is_some() => RunState::Failed,
                        Decision::Stay => RunState::Exited,
                        Decision::RestartAfter(_) => RunState::Restarting,
                    };
                });
                match decision {
                    Decision::Stay => return,
                    Decision::RestartAfter(delay) => {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => Step::Start,
                            _ = stop_requested(&mut stop_rx) => {
                                c.update(|o| o.state = RunState::Exited);
                                return;
                            }
                        }
                    }
                }
            }
        };
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once a stop was requested (holding no borrow of the channel across awaits).
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn probe_of(c: &ContainerRt) -> Option<Probe> {
    let hc = c.launch.spec.healthcheck.as_ref()?;
    match Probe::from_spec(hc) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("{}: {e}; no health checks run", c.launch.id));
            None
        }
    }
}

/// Probes a running container until aborted, keeping its observed health current.
async fn run_health(inner: Arc<Inner>, c: Arc<ContainerRt>, probe: Probe, rec: ShimRecord) {
    let mut health = Health {
        status: c.observed().health.unwrap_or(HealthStatus::Starting),
        failing_streak: 0,
    };
    c.update(|o| o.health = Some(health.status));
    let since_start = || Duration::from_millis(unix_millis().saturating_sub(rec.started_at_ms));
    loop {
        tokio::time::sleep(health.next_delay(&probe, since_start())).await;
        let passed = run_probe(&inner, &c.launch, rec.pid, &probe).await;
        let before = health.status;
        health.on_probe(&probe, passed, since_start());
        if health.status != before {
            c.update(|o| o.health = Some(health.status));
        }
    }
}

async fn run_probe(inner: &Inner, launch: &Launch, pid: u32, probe: &Probe) -> bool {
    let Ok(child) = start_exec(inner, launch, pid, &probe.argv, &BTreeMap::new(), false) else {
        return false;
    };
    // Killed and reaped if this probe is abandoned (timeout, or the health task aborted when the
    // container stops): a probe never outlives its check.
    let mut guard = ProbeGuard(Some(child.pid));
    let result = tokio::time::timeout(probe.timeout, wait_child(child.pid)).await;
    if result.is_ok() {
        guard.0 = None; // exited and reaped: its pid is no longer ours to signal
    }
    matches!(result, Ok(Ok(0)))
}

struct ProbeGuard(Option<u32>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_exec(pid);
            if let Ok(raw) = i32::try_from(pid) {
                // Reaping blocks until the kill lands; not on the async runtime's threads.
                std::thread::spawn(move || {
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(raw), None);
                });
            }
        }
    }
}

/// A process started by [`ContainerRuntime::exec`]: our child, with its output pipes.
struct ExecChild {
    pid: u32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

fn start_exec(
    inner: &Inner,
    launch: &Launch,
    pid: u32,
    argv: &[String],
    env: &BTreeMap<String, String>,
    capture: bool,
) -> io::Result<ExecChild> {
    let null = |write: bool| -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/null")?,
        ))
    };
    let (out_r, out_w, err_r, err_w) = if capture {
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        (Some(out_r), out_w, Some(err_r), err_w)
    } else {
        (None, null(true)?, None, null(true)?)
    };
    let stdio = seam::ContainerStdio {
        stdin: null(false)?,
        stdout: out_w,
        stderr: err_w,
    };
    // `stdio` (our copies of the write ends) is dropped by the call, so the pipes see EOF when
    // the command exits.
    let pid = inner.cfg.runtime.exec(launch, pid, argv, env, stdio)?;
    Ok(ExecChild {
        pid,
        stdout: out_r,
        stderr: err_r,
    })
}

/// Waits for our child `pid` to exit and reaps it: its exit code, 128 + signal when killed.
async fn wait_child(pid: u32) -> io::Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    let raw = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
    let reap = move || loop {
        match waitpid(raw, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::other(format!("waiting for exec pid {pid}: {e}"))),
        }
    };
    if let Some(fd) = pidfd_open(pid) {
        // SAFETY: an `OwnedFd` stays open and refers to the same pidfd until the `AsyncFd` drops it.
        if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
            let _ = afd.readable().await;
            // It has exited: this waitpid returns at once.
            return reap();
        }
    }
    // No pidfd: wait where blocking is allowed.
    tokio::task::spawn_blocking(reap)
        .await
        .map_err(io::Error::other)?
}

/// Kills an exec'ed command (and its process group, when it leads one).
fn kill_exec(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-raw), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Starts `compose-fleet-agent shim <dir>` and waits for its `started <pid>` line.
async fn spawn_shim(inner: &Inner, launch: &Launch) -> io::Result<ShimRecord> {
    let _ = std::fs::remove_file(launch.dir.join(SHIM_FILE));
    let _ = std::fs::remove_file(launch.dir.join(EXIT_FILE));
    inner.cfg.runtime.create(launch)?;
    let mut child = tokio::process::Command::new(&inner.cfg.shim_exe)
        .arg("shim")
        .arg(&launch.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running the shim {}: {e}", inner.cfg.shim_exe.display()),
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the shim has no stdout"))?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    // The first process exits right after forking the shim proper.
    let _ = child.wait().await;
    match read {
        Err(_) => return Err(io::Error::other("the shim did not report within 60 s")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    let line = line.trim();
    if let Some(err) = line.strip_prefix("error ") {
        return Err(io::Error::other(err.to_string()));
    }
    if !line.starts_with("started ") {
        return Err(io::Error::other(format!("the shim said {line:?}")));
    }
    read_json::<ShimRecord>(&launch.dir.join(SHIM_FILE))
        .ok_or_else(|| io::Error::other(format!("the shim wrote no readable {SHIM_FILE}")))
}

/// Waits until process `pid` (started at `start`) has exited. It is not our child, so this
/// polls a pidfd.
async fn wait_exit(pid: u32, start: u64) {
    let Some(fd) = pidfd_open(pid) else {
        return;
    };
    // The pid may have been reused between reading shim.json and opening the pidfd.
    if !shim::is_same_process(pid, start) {
        return;
    }
    // SAFETY: an `OwnedFd` stays open and refers to the same pidfd until the `AsyncFd` drops it.
    match unsafe { AsyncFd::register(fd) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            while shim::is_same_process(pid, start) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = nix::libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends the stop signal, waits the grace period, then SIGKILL; returns once the shim exited.
async fn stop_container(inner: &Inner, launch: &Launch, rec: ShimRecord) {
    let signal = parse_signal(launch.spec.stop_signal.as_deref()).unwrap_or(Signal::SIGTERM);
    let grace = launch
        .spec
        .stop_grace_period_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_STOP_GRACE);
    if shim::is_same_process(rec.pid, rec.pid_start) {
        if let Err(e) = inner.cfg.runtime.kill(launch, rec.pid, signal) {
            log(&format!("{}: sending {signal}: {e}", launch.id));
        }
    }
    let shim_gone = wait_exit(rec.shim_pid, rec.shim_start);
    tokio::pin!(shim_gone);
    if tokio::time::timeout(grace, &mut shim_gone).await.is_ok() {
        return;
    }
    if let Err(e) = inner.cfg.runtime.kill(launch, rec.pid, Signal::SIGKILL) {
        log(&format!("{}: sending SIGKILL: {e}", launch.id));
    }
    if tokio::time::timeout(Duration::from_secs(10), shim_gone)
        .await
        .is_err()
    {
        log(&format!(
            "{}: its shim did not exit 10 s after SIGKILL",
            launch.id
        ));
    }
}

/// `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: Option<&str>) -> Option<Signal> {
    let s = s?.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

/// Stops every container of `pods` at once and waits for all of them.
async fn stop_pods<'a>(pods: impl Iterator<Item = &'a PodRt>) {
    let tasks: Vec<JoinHandle<()>> = pods
        .flat_map(|p| &p.containers)
        .filter_map(|c| {
            c.stop.send_replace(true);
            c.task.lock().ok().and_then(|mut t| t.take())
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Gives the pod its fleet address and veth (when the host has a pod network and the runtime a
/// network namespace); the pod's containers join that namespace.
fn attach_network(inner: &Inner, project: &str, pod: &PodSpec) -> io::Result<()> {
    let (Some(network), Some(netns)) = (
        &inner.cfg.network,
        inner.cfg.runtime.pod_netns(project, &pod.name),
    ) else {
        return Ok(());
    };
    if pod.network.mode != crate::proto::NetworkMode::Fleet {
        return Ok(());
    }
    network
        .attach(project, &pod.name, &netns, &pod.ports)
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("attaching the pod to the network: {e}")))
}

/// Removes a stopped pod: its sandbox, its secrets tmpfs, its directory (not its volumes).
fn remove_pod(inner: &Inner, project: &str, pod: &str) {
    if let Some(network) = &inner.cfg.network {
        if let Err(e) = network.detach(project, pod) {
            log(&format!(
                "removing the network of pod {pod} of project {project}: {e}"
            ));
        }
    }
    if let Err(e) = inner.cfg.runtime.remove_pod(project, pod) {
        log(&format!(
            "removing the sandbox of pod {pod} of project {project}: {e}"
        ));
    }
    let dir = &inner.state.pod(project, pod);
    files::unmount_secrets_tmpfs(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            log(&format!("removing {}: {e}", dir.display()));
        }
    }
}

fn validate(req: &ApplyRequest) -> Result<(), Failure> {
    if !files::valid_name(&req.project) {
        return Err(Failure::bad(format!(
            "{:?} is not a valid project name",
            req.project
        )));
    }
    for pod in &req.pods {
        if !files::valid_name(&pod.name) {
            return Err(Failure::bad(format!(
                "{:?} is not a valid pod name",
                pod.name
            )));
        }
        for c in &pod.containers {
            if !files::valid_name(&c.service) {
                return Err(Failure::bad(format!(
                    "{:?} is not a valid service name",
                    c.service
                )));
            }
        }
    }
    Ok(())
}

fn more(id: u64, r: Response) -> ResponseFrame {
    ResponseFrame {
        more: true,
        ..ResponseFrame::ok(id, r)
    }
}

fn log_line(launch: &Launch, r: logfile::Record) -> LogLine {
    LogLine {
        pod: launch.pod.clone(),
        service: launch.service.clone(),
        stream: r.stream,
        time_ms: r.time_ms,
        line: r.line,
    }
}

/// Where a follower resumes: the current log file's inode and the offset read up to.
type Cursor = Option<(u64, u64)>;

/// Every record of a container plus a cursor at the end of its current file.
fn read_logs(launch: &Launch) -> (Vec<logfile::Record>, Cursor) {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for n in (1..launch.log_max_files.max(1)).rev() {
        if let Ok(f) = std::fs::File::open(logfile::log_path(&launch.dir, n)) {
            logfile::read_records(std::io::BufReader::new(f), &mut out);
        }
    }
    let Ok(f) = std::fs::File::open(logfile::log_path(&launch.dir, 0)) else {
        return (out, None);
    };
    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
    let mut reader = std::io::BufReader::new(f);
    let mut offset = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            // A last line without its newline is being written: leave it to the follower.
            Ok(_) if !line.ends_with('\n') => break,
            Ok(n) => {
                offset += n as u64;
                if let Ok(r) = serde_json::from_str(&line) {
                    out.push(r);
                }
            }
        }
    }
    (out, Some((ino, offset)))
}

/// Sends new records of one container's log as they are written, across rotations.
async fn follow_log(
    id: u64,
    launch: Launch,
    mut cursor: Cursor,
    since_ms: u64,
    tx: mpsc::Sender<ResponseFrame>,
) {
    use std::io::{BufRead, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let current = logfile::log_path(&launch.dir, 0);
    loop {
        let ino_now = std::fs::metadata(&current).map(|m| m.ino()).ok();
        // Read the rest of the file we were in (it may have been rotated to `.1`), then move on.
        let (ino, offset) = cursor.unwrap_or((ino_now.unwrap_or(0), 0));
        let path = if Some(ino) == ino_now {
            current.clone()
        } else {
            logfile::log_path(&launch.dir, 1)
        };
        let mut records = Vec::new();
        let mut new_offset = offset;
        if let Ok(mut f) = std::fs::File::open(&path) {
            if f.metadata().map(|m| m.ino()).ok() == Some(ino)
                && f.seek(SeekFrom::Start(offset)).is_ok()
            {
                let mut reader = std::io::BufReader::new(f);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(n) if n > 0 && line.ends_with('\n') => {
                            new_offset += n as u64;
                            if let Ok(r) = serde_json::from_str::<logfile::Record>(&line) {
                                records.push(r);
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        for r in records.into_iter().filter(|r| r.time_ms >= since_ms) {
            if tx
                .send(more(id, Response::LogLine(log_line(&launch, r))))
                .await
                .is_err()
            {
                return;
            }
        }
        cursor = match ino_now {
            Some(now) if now != ino => Some((now, 0)),
            Some(_) => Some((ino, new_offset)),
            None => None,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tx.closed() => return,
        }
    }
}

fn pump(id: u64, stream: Stream, fd: OwnedFd, tx: mpsc::Sender<ResponseFrame>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx
                        .send(more(id, Response::ExecOutput { stream, data }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_compose_spelling() {
        assert_eq!(parse_signal(Some("SIGQUIT")), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal(Some("term")), Some(Signal::SIGTERM));
        assert_eq!(parse_signal(Some("9")), Some(Signal::SIGKILL));
        assert_eq!(parse_signal(Some("SIGNOPE")), None);
        assert_eq!(parse_signal(None), None);
    }
}
