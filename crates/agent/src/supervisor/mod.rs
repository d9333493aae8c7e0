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
//! - [`lease`]: the deploy lock's leases and fencing numbers (`Lock`, `Unlock`, and the check of
//!   `ApplyPods`'/`Remove`'s `fence`).
//! - [`releases`]: the numbered release records per project (`RecordRelease`, `Releases`).
//!
//! The daemon's side, split by what a request does (this file holds the types, the request
//! front door and `Status`):
//! - `apply.rs`: `Apply` (pull, diff, stop what goes, prepare and start what comes) and `Remove`;
//! - `container.rs`: one container's task (start or adopt a shim, wait, restart policy, stop);
//! - `adopt.rs`: re-adoption of running shims when the daemon starts;
//! - [`generations`]: start-first replacement, where two generations of one pod run side by
//!   side under two instance names until the old one is retired;
//! - `probe.rs`: health checks; `exec.rs`: `Exec`; `logs.rs`: `Logs` (and `follow`);
//!   `control.rs`: `Control` (stop, start, restart in place) and `Pull`.
//!
//! The daemon's dispatch calls [`Supervisor::handle`] with each request frame (all but `Hello`)
//! and forwards the frames it yields. The supervisor knows nothing of sockets, SSH or namespaces.
//!
//! Each container has one tokio task that starts a shim (or adopts a running one), waits for the
//! shim to exit (a pidfd: the shim is not our child), reads `exit.json`, and asks the restart
//! policy what next. Killing the daemon loses only these tasks: shims and containers keep
//! running, and [`Supervisor::open`] re-adopts them from their `shim.json` (same pid, same start
//! time) without restarting anything.

mod adopt;
mod apply;
mod container;
mod control;
pub mod diff;
mod exec;
pub mod files;
pub mod generations;
pub mod health;
pub mod isolated;
pub mod lease;
pub mod logfile;
mod logs;
mod probe;
mod receive;
pub mod releases;
pub mod restart;
pub mod seam;
pub mod shim;
pub mod state;

pub use container::parse_signal;

// What the parts below use of each other (each opens with `use super::*`).
use container::{pidfd_open, Step};
use exec::{kill_exec, start_exec, wait_child};
use probe::{probe_of, run_health};

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
    AgentError, ApplyPodsRequest, ApplyReport, ApplyRequest, ContainerStatus, ErrorKind, ExecInput,
    ExecRequest, LogLine, LogsRequest, PodSpec, PodStatus, Request, RequestFrame, Response,
    ResponseFrame, StatusReport, Stream, WatchReport, WatchRequest, MAX_WATCH_MS,
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
    /// The image store itself, for receiving images the CLI delivers (`images` is the same
    /// store behind the pull seam); `None` refuses deliveries.
    pub image_store: Option<Arc<crate::image::ImageStore>>,
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
            image_store: None,
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
    /// The stdin of each running `Exec` that asked for one, by session (`ExecInput` writes it).
    exec_inputs: Mutex<BTreeMap<u64, exec::Stdin>>,
    /// The next exec session number.
    next_session: std::sync::atomic::AtomicU64,
    /// The projects' deploy leases (issue 12).
    leases: lease::Leases,
    /// The projects' release records (issue 12).
    releases: releases::Releases,
    /// What `Watch` waits on ([`Changes`]).
    changes: Changes,
}

#[derive(Default)]
struct ProjectRt {
    pods: BTreeMap<String, PodRt>,
}

struct PodRt {
    spec_hash: String,
    /// The name its sandbox, network address and state directory use on this host: the pod's
    /// own name, or its twin ([`generations::twin`]) when it replaced a generation start-first.
    instance: String,
    containers: Vec<Arc<ContainerRt>>,
    /// The generation this one replaced start-first: still running, and serving, until it is
    /// retired (or this one is given up for it). Never has an outgoing generation itself.
    outgoing: Option<Box<PodRt>>,
}

impl PodRt {
    /// Its containers and its outgoing generation's.
    fn all_containers(&self) -> impl Iterator<Item = &Arc<ContainerRt>> {
        self.containers
            .iter()
            .chain(self.outgoing.iter().flat_map(|o| o.containers.iter()))
    }

    /// Its instance and its outgoing generation's.
    fn instances(&self) -> Vec<String> {
        std::iter::once(self.instance.clone())
            .chain(self.outgoing.iter().map(|o| o.instance.clone()))
            .collect()
    }
}

struct ContainerRt {
    launch: Launch,
    obs: Mutex<Observed>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The supervisor's change number, bumped at each [`ContainerRt::update`].
    changes: Changes,
}

/// The supervisor's change number: bumped whenever any container's observed state changes, and
/// waited on by `Watch`. It starts at the supervisor's start time in ms, so that the numbers of a
/// restarted daemon do not repeat those a client saw from the one before.
type Changes = Arc<watch::Sender<u64>>;

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
    /// Stopped by a `Control` stop; cleared by a start (see `ContainerStatus::stopped`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
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
        let leases = lease::Leases::new(&state);
        let releases = releases::Releases::new(&state);
        let sup = Supervisor {
            inner: Arc::new(Inner {
                cfg,
                state,
                projects: tokio::sync::Mutex::new(BTreeMap::new()),
                apply_pods: tokio::sync::Mutex::new(()),
                exec_inputs: Mutex::new(BTreeMap::new()),
                next_session: std::sync::atomic::AtomicU64::new(1),
                leases,
                releases,
                changes: Arc::new(watch::channel(unix_millis()).0),
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
        let images = Arc::new(
            crate::image::ImageStore::open(paths.state.join("images")).map_err(io::Error::other)?,
        );
        let exe = std::env::current_exe()?;
        let mut cfg = SupervisorConfig::new(&paths.state, exe, runtime, images.clone());
        cfg.image_store = Some(images);
        let network =
            crate::network::Network::open(&paths.state, Arc::new(crate::network::kernel::Netlink))?;
        // The userspace mesh device died with the last daemon; pods still run and need it.
        if let Err(e) = network.resume() {
            eprintln!("daemon: bringing the mesh back: {e}");
        }
        // Pods attached by an older agent get today's link (a /32, an isolated bridge port).
        let runtime = cfg.runtime.clone();
        let refreshed = network.refresh_pods(|project, pod| runtime.pod_netns(project, pod));
        if !refreshed.is_empty() {
            eprintln!("daemon: links brought up to date: {}", refreshed.join(", "));
        }
        cfg.network = Some(Arc::new(network));
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
            Request::ApplyPods(req) => match self.inner.leases.check(&req.project, req.fence) {
                Ok(()) => self.apply_pods(req).await.map(Response::Applied),
                Err(e) => Err(e),
            },
            Request::Status { project } => {
                Ok(Response::Status(self.status(project.as_deref()).await))
            }
            Request::Watch(req) => Ok(Response::Watched(self.watch(req).await)),
            Request::Logs(req) => self.logs(id, req, &tx).await,
            Request::Exec(req) => self.exec(id, req, &tx).await,
            Request::ExecInput(input) => self.exec_input(input).await,
            Request::Control(req) => self.control(req).await,
            Request::Pull(req) => self.pull(id, req, &tx).await,
            request @ (Request::BlobsWanted { .. }
            | Request::BlobChunk(_)
            | Request::ImageCommit(_)) => self.receive(request).await,
            Request::Services(map) => services(&self.inner, map),
            Request::Remove {
                project,
                volumes,
                fence,
            } => match self.inner.leases.check(&project, fence) {
                Ok(()) => self
                    .remove(&project, volumes)
                    .await
                    .map(|pods| Response::Removed { pods }),
                Err(e) => Err(e),
            },
            Request::Lock(req) => self
                .inner
                .leases
                .lock(&req)
                .map(|(granted, lease)| Response::Lease { granted, lease }),
            Request::Unlock { project, fence } => self
                .inner
                .leases
                .unlock(&project, fence)
                .map(|(granted, lease)| Response::Lease { granted, lease }),
            Request::RecordRelease(req) => self
                .inner
                .leases
                .check(&req.record.project, req.fence)
                .and_then(|()| self.inner.releases.record(&req))
                .inspect(|_| releases::after_record(&self.inner))
                .map(|releases| Response::Releases { releases }),
            Request::Releases { project, pods } => self
                .inner
                .releases
                .list(&project, pods)
                .map(|releases| Response::Releases { releases }),
            Request::ServicesHeld { project } => Ok(Response::ServicesHeld {
                map: self
                    .inner
                    .cfg
                    .network
                    .as_ref()
                    .and_then(|n| n.service_map_held(&project)),
            }),
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
            .flat_map(|p| p.all_containers())
        {
            if let Some(task) = c.task.lock().ok().and_then(|mut t| t.take()) {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// The host's pod network, when pods have one.
    pub fn network(&self) -> Option<Arc<crate::network::Network>> {
        self.inner.cfg.network.clone()
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
                let status = |g: &PodRt| PodStatus {
                    project: pname.clone(),
                    name: name.clone(),
                    spec_hash: g.spec_hash.clone(),
                    ip: self
                        .inner
                        .cfg
                        .network
                        .as_ref()
                        .and_then(|n| n.address_of(pname, &g.instance))
                        .map(|ip| ip.to_string()),
                    containers: g.containers.iter().map(|c| c.status()).collect(),
                    instance: (g.instance != *name).then(|| g.instance.clone()),
                    outgoing: None,
                };
                let mut current = status(pod);
                current.outgoing = pod.outgoing.as_deref().map(|o| Box::new(status(o)));
                pods.push(current);
            }
        }
        let service_map = project.and_then(|p| {
            self.inner
                .cfg
                .network
                .as_ref()
                .and_then(|n| n.service_map_digest(p))
        });
        StatusReport { pods, service_map }
    }

    /// `Watch`: the project's status once the change number differs from `since` (at once if it
    /// already does), or after the request's timeout (capped at [`MAX_WATCH_MS`]).
    pub async fn watch(&self, req: WatchRequest) -> WatchReport {
        let mut rx = self.inner.changes.subscribe();
        if *rx.borrow_and_update() == req.since {
            let wait = Duration::from_millis(req.timeout_ms.min(MAX_WATCH_MS));
            // A change, the timeout, or the sender gone (never while `self` lives): answer.
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
        let changes = *rx.borrow();
        WatchReport {
            changes,
            status: self.status(Some(&req.project)).await,
        }
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
}

/// `Services`: the network's (see `network::service`).
fn services(inner: &Inner, map: crate::proto::service::ServiceMap) -> Result<Response, Failure> {
    let Some(network) = &inner.cfg.network else {
        return Ok(Response::Services {
            vips: 0,
            endpoints: 0,
        });
    };
    match network.set_services(map) {
        Ok((vips, endpoints)) => Ok(Response::Services { vips, endpoints }),
        Err(crate::network::NetError::Services(why)) => Err(Failure::bad(why)),
        Err(e) => Err(Failure::host("setting the service map", e)),
    }
}

fn more(id: u64, r: Response) -> ResponseFrame {
    ResponseFrame {
        more: true,
        ..ResponseFrame::ok(id, r)
    }
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
