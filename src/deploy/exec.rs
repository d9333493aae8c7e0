//! The executor of `up` (and the fleet side of `ps` and `down`): the thin I/O shell around the
//! pure core. It connects to every host in parallel (one SSH connection and one agent channel
//! each, `Hello` then one `Status`), places sticky to what runs, builds the desired state
//! ([`crate::plan::podspec`], [`super::desired`]), diffs it ([`super::diff`]) and drives the
//! [`Flow`]: its `Pull`s become one `Pull` request per host with all that host's images, sent at
//! the start (so a dependency's wait overlaps its dependents' pulls); each
//! `Create`/`Replace`/`Restart`/`Remove` becomes one `ApplyPods` request naming that pod on its
//! host, and the pods it started are watched, their changes turned into
//! `Started`/`Healthy`/`Unhealthy`/`Exited` events: by one `Watch` always outstanding per host
//! ([`watch_host`]), which the agent answers the moment anything it observes changes (or after
//! [`WATCH_WAIT`], so that a silent host is still told from a quiet one), or, on an agent whose
//! hello does not offer `watch`, by `Status` polls every [`Options::poll`]. A host's one agent
//! channel carries all these requests at once ([`HostConn`] routes replies by id): a pull does
//! not delay a watch.
//!
//! It never prints: everything the user may want to see is a [`Progress`] given to the caller's
//! callback (`src/cli/up.rs` renders it).
//!
//! Hosts that do not answer: [`on_unreachable`] decides right after [`connect`], before any
//! change (`--on-unreachable fail | skip | reschedule`); [`prepare`] then keeps their recorded
//! replicas in place (`skip`) or places them on the others (`reschedule`). A host lost during
//! the run is given up on for the rest of it ([`HostConn::mark_lost`]).
//!
//! Stopgaps, each with a later issue: image digests are not resolved (a tag pushed again is not
//! seen as a change); registry credentials are not sent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::desired::{self, Desired};
use super::diff::{self, Diff, Observed, ObservedPod};
use super::flow::{self, Action, At, Dependency, Event, Failure, Flow, Summary};
use crate::compose::model::Project;
use crate::diag::Diagnostics;
use crate::graph::ServiceGraph;
use crate::inventory::Fleet;
use crate::plan::{self, podspec, HostFacts, PlanError};
use crate::proto::net::{self, Ipv4Net};
use crate::proto::{
    ApplyPodsRequest, HostNetwork, LogsRequest, PodSpec, PodStatus, Request, Response,
    ResponseFrame, StatusReport, WatchReport, WatchRequest,
};
use crate::ssh::{self, AgentBinary, ErrorClass, Hosts, SshError, SshTarget, Transport};

/// How `up` runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub ssh: ssh::Options,
    /// `--remove-orphans`: remove pods of services the compose file no longer defines.
    pub remove_orphans: bool,
    /// `up SERVICE…`: converge only these and what they depend on; empty means all.
    pub services: Vec<String>,
    /// The whole run may wait this long for containers to start, turn healthy or exit.
    pub timeout: Duration,
    /// One `ApplyPods` (it pulls the pod's images) may take this long.
    pub request_timeout: Duration,
    /// How often started pods are polled on an agent without `watch` (and how long a failed
    /// `Watch` waits before it is asked again).
    pub poll: Duration,
    /// `up --wait`: end only when every container this run started is healthy (with a health
    /// check), running, or exited 0; anything else fails the run.
    pub wait: bool,
    /// The secrets' and configs' contents ([`read_files`]), delivered in the pods' specs.
    pub files: podspec::FileContents,
    /// Registry credentials by registry host ([`super::auth`]), sent with each pull.
    pub registry_auth: BTreeMap<String, crate::proto::RegistryAuth>,
    /// The deploy lock's fencing number per host ([`super::lock`]), sent with every write.
    pub fences: BTreeMap<String, u64>,
    /// Says why once the deploy lock is lost (a renewal refused: another deploy holds it now);
    /// the run then stops as at its deadline.
    pub lease_lost: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// `update_config.delay` per service: a replica replaced after another of its service in
    /// the same run waits this long first (the old one serves meanwhile).
    pub update_delay: BTreeMap<String, Duration>,
    /// The project whose service map is pushed to every host whenever pods start during the
    /// run ([`super::services::publish`]): a pod on another host resolves a dependency by name
    /// and is let through its network's isolation as soon as the dependency runs, not only when
    /// the deploy ends.
    pub service_map: Option<Arc<crate::compose::model::Project>>,
    /// `--on-unreachable`: what to do about hosts that did not answer ([`on_unreachable`]).
    pub on_unreachable: OnUnreachable,
    /// The hosts that did not answer, each with the replicas the last service map the others
    /// hold placed there (empty: none recorded). With `skip` these stay where they are.
    pub lost: BTreeMap<String, Vec<crate::schedule::Observed>>,
    /// The pods of the hosts that did not answer, as that map records them.
    pub lost_pods: BTreeMap<String, Vec<PodStatus>>,
    /// A watched host that does not answer a `Status` or a `Watch` within this long is lost (a
    /// frozen agent keeps its SSH channel open: only a deadline tells).
    pub lost_after: Duration,
}

/// What `up` does about hosts that do not answer (`--on-unreachable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnUnreachable {
    /// Change nothing anywhere and name the hosts that did not answer
    #[default]
    Fail,
    /// Deploy to the hosts that answer; leave the pods of those that do not as they are
    Skip,
    /// Treat the hosts that do not answer as gone: place their replicas on the others, as far
    /// as they fit (their stale copies are removed by the first `up` after they return)
    Reschedule,
}

impl Options {
    /// The pods the service map keeps for hosts that did not answer: with `skip` they stay
    /// where they are, so the map must go on saying so (else the next `up` would not know).
    pub fn kept_pods(&self) -> BTreeMap<String, Vec<PodStatus>> {
        match self.on_unreachable {
            OnUnreachable::Skip => self.lost_pods.clone(),
            _ => BTreeMap::new(),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ssh: ssh::Options::default(),
            remove_orphans: false,
            services: Vec::new(),
            timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(300),
            // Without `watch`, a dependent starts at most this long after its dependency is
            // ready: each poll is one small `Status` per host with pods being watched.
            poll: Duration::from_millis(100),
            wait: false,
            files: podspec::FileContents::default(),
            registry_auth: BTreeMap::new(),
            fences: BTreeMap::new(),
            lease_lost: None,
            update_delay: BTreeMap::new(),
            service_map: None,
            on_unreachable: OnUnreachable::Fail,
            lost: BTreeMap::new(),
            lost_pods: BTreeMap::new(),
            // ssh's keepalive gives up on a silent connection after about 15s (3 × 5s).
            lost_after: Duration::from_secs(20),
        }
    }
}

/// What happened, for the user. In order; `Done` is last.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A host answered `Hello` and `Status`.
    Connected {
        host: String,
        pods: usize,
        rtt: Duration,
    },
    /// A host could not be reached; it gets nothing new.
    Unreachable {
        host: String,
        reason: String,
    },
    /// Something the user should know that does not fail the run.
    Warning(String),
    /// A pod action was sent.
    Issued(Action),
    /// What a host reported back (started, healthy, exited, removed, failed, ...).
    Event(Event),
    /// The last log lines of a container that exited non-zero.
    Logs {
        at: At,
        lines: Vec<String>,
    },
    /// The deploy failed (more may follow while actions in flight answer).
    Failed(Failure),
    Done(Summary),
}

/// Why `up` could not run.
#[derive(Debug)]
pub enum ExecError {
    /// The user's input or fleet (exit 1).
    User(String),
    /// Problems in the compose file, to render (exit 1).
    Project(Diagnostics),
    /// A bug or a broken environment (exit 2).
    Internal(String),
}

/// The frames of one request as they arrive, or the error that ended the channel.
type Frames = mpsc::Receiver<Result<ResponseFrame, SshError>>;

/// One host's agent channel, shared by concurrent requests: a driver task owns the channel,
/// writes each request with a fresh id and routes every reply frame to its request by id, so a
/// slow request (a pull, a followed log) holds up no other (a status poll, an exec's input).
pub struct HostConn {
    pub name: String,
    /// The driver's queue; replaced when the channel is reopened ([`HostConn::adopt`]).
    requests: std::sync::Mutex<RequestQueue>,
    /// Requests sent after the handshake: what a command cost this host in round trips.
    sent: std::sync::atomic::AtomicU64,
    /// Why this host was given up on during the run ([`HostConn::mark_lost`]).
    lost: std::sync::Mutex<Option<String>>,
    /// The agent answers `Watch` (its hello says so): started pods are watched by pushed
    /// changes, not polled.
    watch: std::sync::atomic::AtomicBool,
    /// The SSH sessions behind the channel (the last one is live; older ones dropped and were
    /// reopened).
    _sessions: std::sync::Mutex<Vec<<Hosts as Transport>::Session>>,
}

type RequestQueue = mpsc::Sender<(Request, mpsc::Sender<Result<ResponseFrame, SshError>>)>;

impl HostConn {
    fn new(name: String, client: ssh::AgentClient, session: <Hosts as Transport>::Session) -> Self {
        let (requests, rx) = mpsc::channel(64);
        tokio::spawn(drive(client, rx));
        HostConn {
            name,
            requests: std::sync::Mutex::new(requests),
            sent: std::sync::atomic::AtomicU64::new(0),
            lost: std::sync::Mutex::new(None),
            watch: std::sync::atomic::AtomicBool::new(false),
            _sessions: std::sync::Mutex::new(vec![session]),
        }
    }

    /// Says what the agent's hello offered ([`crate::proto::HostFacts::capabilities`]).
    pub fn offered(&self, facts: &crate::proto::HostFacts) {
        let watch = facts
            .capabilities
            .iter()
            .any(|c| c == crate::proto::CAPABILITY_WATCH);
        self.watch
            .store(watch, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the agent answers `Watch`.
    pub fn watches(&self) -> bool {
        self.watch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Gives up on this host for the rest of the run: every later request fails at once with
    /// `reason`, so that a rollback, the lock's release or the service map's push does not wait
    /// out a deadline again for a host already known not to answer.
    pub fn mark_lost(&self, reason: &str) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.get_or_insert_with(|| reason.to_string());
    }

    /// Why this host was given up on, if it was.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes over `fresh`'s channel (a new SSH session and agent handshake to the same host)
    /// after this one dropped: every holder of this connection (the lock's renewals, the
    /// rollout) goes on over the new channel. Requests in flight on the old one fail as they did.
    pub fn adopt(&self, fresh: HostConn) {
        let queue = fresh
            .requests
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()) = queue;
        self.watch.store(
            fresh.watch.load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        let sessions = fresh
            ._sessions
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        self._sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(sessions);
    }

    /// How many requests were sent to this host (the handshake's `Hello` not counted).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends `request`; its reply frames come on the receiver (the last has no `more`).
    async fn send(&self, request: Request) -> Result<Frames, SshError> {
        if let Some(why) = self.lost() {
            return Err(SshError::new(
                &self.name,
                ErrorClass::Unreachable,
                format!("given up on earlier in this run: {why}"),
            ));
        }
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1024);
        let queue = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        queue.send((request, tx)).await.map_err(|_| {
            SshError::new(
                &self.name,
                ErrorClass::Unreachable,
                "the agent channel is closed",
            )
        })?;
        Ok(rx)
    }

    /// The next frame of a request; the channel ending early is an error.
    async fn next(&self, frames: &mut Frames) -> Result<ResponseFrame, SshError> {
        match frames.recv().await {
            Some(frame) => frame,
            None => Err(SshError::new(
                &self.name,
                ErrorClass::Unreachable,
                "the agent channel closed before the reply",
            )),
        }
    }

    fn agent_error(&self, e: &crate::proto::AgentError) -> SshError {
        SshError::new(
            &self.name,
            ErrorClass::Agent,
            format!("the agent answered: {e}"),
        )
    }

    /// Sends `request` and returns its last reply (streamed replies before it are skipped), or
    /// fails after `timeout`.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, SshError> {
        let exchange = async {
            let mut frames = self.send(request).await?;
            loop {
                let frame = self.next(&mut frames).await?;
                if frame.more {
                    continue;
                }
                return match (frame.ok, frame.err) {
                    (Some(r), _) => Ok(r),
                    (None, Some(e)) => Err(self.agent_error(&e)),
                    (None, None) => Err(SshError::new(
                        &self.name,
                        ErrorClass::Agent,
                        "the agent sent an empty reply",
                    )),
                };
            }
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| {
            SshError::new(
                &self.name,
                ErrorClass::Timeout,
                format!("the agent did not answer within {}s", timeout.as_secs()),
            )
        })?
    }

    /// The project's pods on this host.
    pub async fn status(
        &self,
        project: &str,
        timeout: Duration,
    ) -> Result<Vec<PodStatus>, SshError> {
        Ok(self.status_report(project, timeout).await?.pods)
    }

    /// The project's pods on this host and the digest of the service map it holds.
    pub async fn status_report(
        &self,
        project: &str,
        timeout: Duration,
    ) -> Result<StatusReport, SshError> {
        match self
            .call(
                Request::Status {
                    project: Some(project.to_string()),
                },
                timeout,
            )
            .await?
        {
            Response::Status(mut s) => {
                s.pods.retain(|p| p.project == project);
                Ok(s)
            }
            other => Err(unexpected(&self.name, "Status", &other)),
        }
    }

    /// The project's pods on this host once something the agent observes changed after the
    /// change numbered `since`, or after `wait` with nothing changed; fails after `timeout`.
    pub async fn watch(
        &self,
        project: &str,
        since: u64,
        wait: Duration,
        timeout: Duration,
    ) -> Result<WatchReport, SshError> {
        let request = Request::Watch(WatchRequest {
            project: project.to_string(),
            since,
            timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        });
        match self.call(request, timeout).await? {
            Response::Watched(mut w) => {
                w.status.pods.retain(|p| p.project == project);
                Ok(w)
            }
            other => Err(unexpected(&self.name, "Watch", &other)),
        }
    }

    /// Sends `request` and forwards each streamed reply to `items` until the last one, which is
    /// returned. With no timeout: a followed log ends when the caller drops the future.
    pub async fn stream(
        &self,
        request: Request,
        items: &mpsc::Sender<Response>,
    ) -> Result<Response, SshError> {
        let mut frames = self.send(request).await?;
        loop {
            let frame = self.next(&mut frames).await?;
            match (frame.more, frame.ok, frame.err) {
                (true, Some(r), _) => {
                    if items.send(r).await.is_err() {
                        return Ok(Response::End);
                    }
                }
                (true, None, _) => {}
                (false, Some(r), _) => return Ok(r),
                (false, None, Some(e)) => return Err(self.agent_error(&e)),
                (false, None, None) => {
                    return Err(SshError::new(
                        &self.name,
                        ErrorClass::Agent,
                        "the agent sent an empty reply",
                    ))
                }
            }
        }
    }

    /// Runs `exec` in a container: its output goes to `output`, the chunks from `stdin` (when
    /// given) to its stdin, whose end (the sender dropped) closes it. Returns the exit code.
    /// Stdin chunks go one at a time, each after the agent took the last (it serves requests
    /// concurrently, and their order matters).
    pub async fn exec(
        &self,
        mut request: crate::proto::ExecRequest,
        mut stdin: Option<mpsc::Receiver<Vec<u8>>>,
        output: &mpsc::Sender<ExecOutput>,
    ) -> Result<i32, SshError> {
        use crate::proto::{ExecInput, Stream};
        request.stdin = stdin.is_some();
        let mut frames = self.send(Request::Exec(request)).await?;
        let mut session = None;
        loop {
            let feeding = session.is_some() && stdin.is_some();
            let chunk = async {
                match stdin.as_mut() {
                    Some(rx) if feeding => rx.recv().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = self.next(&mut frames) => {
                    let frame = frame?;
                    match (frame.ok, frame.err) {
                        (Some(Response::ExecStarted { session: s }), _) => session = Some(s),
                        (Some(Response::ExecOutput { stream, data }), _) => {
                            let out = match stream {
                                Stream::Stdout => ExecOutput::Stdout(data),
                                Stream::Stderr => ExecOutput::Stderr(data),
                            };
                            let _ = output.send(out).await;
                        }
                        (Some(Response::ExecExit { code }), _) => return Ok(code),
                        (Some(other), _) if !frame.more => {
                            return Err(unexpected(&self.name, "Exec", &other))
                        }
                        (_, Some(e)) => return Err(self.agent_error(&e)),
                        _ => {}
                    }
                }
                chunk = chunk => {
                    let Some(s) = session else { continue };
                    let (data, eof) = match chunk {
                        Some(data) => (data, false),
                        None => {
                            stdin = None;
                            (Vec::new(), true)
                        }
                    };
                    let input = Request::ExecInput(ExecInput {
                        session: s,
                        data_hex: hex::encode(&data),
                        eof,
                    });
                    // The command may exit meanwhile (its session gone): its exit code says
                    // what happened, not this refusal.
                    let _ = self.call(input, Duration::from_secs(60)).await;
                }
            }
        }
    }
}

/// The driver of one agent channel: sends requests as they come (ids from 1; `hello` was 0),
/// routes reply frames by id. When the channel fails, every open request hears why.
async fn drive(
    mut client: ssh::AgentClient,
    mut requests: mpsc::Receiver<(Request, mpsc::Sender<Result<ResponseFrame, SshError>>)>,
) {
    let mut waiting: BTreeMap<u64, mpsc::Sender<Result<ResponseFrame, SshError>>> = BTreeMap::new();
    let mut next = 1u64;
    loop {
        tokio::select! {
            got = requests.recv() => {
                let Some((request, tx)) = got else {
                    // Every handle is gone: close the channel.
                    return;
                };
                let id = next;
                next += 1;
                match client.send(id, request).await {
                    Ok(()) => {
                        waiting.insert(id, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                    }
                }
            }
            // Cancel-safe: a line half read stays in the client's buffer.
            frame = client.recv() => match frame {
                Ok(frame) => {
                    let Some(id) = frame.id else { continue };
                    let last = !frame.more;
                    if let Some(tx) = waiting.get(&id) {
                        // A request whose caller went away (a timeout, a stream dropped) is
                        // forgotten; the agent's late replies to it are skipped.
                        if tx.send(Ok(frame)).await.is_err() || last {
                            waiting.remove(&id);
                        }
                    }
                }
                Err(e) => {
                    for (_, tx) in std::mem::take(&mut waiting) {
                        let _ = tx.send(Err(e.clone())).await;
                    }
                    // Requests still coming hear that the channel is closed.
                    drop(requests);
                    return;
                }
            }
        }
    }
}

/// What `exec` streams back to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(String),
    Stderr(String),
}

fn unexpected(host: &str, what: &str, r: &Response) -> SshError {
    SshError::new(
        host,
        ErrorClass::Agent,
        format!("unexpected reply to {what}: {r:?}"),
    )
}

/// The fleet as one run sees it: the hosts that answered (with their facts and the project's
/// pods there) and those that did not.
pub struct Connected {
    pub hosts: BTreeMap<String, Arc<HostConn>>,
    pub facts: plan::Facts,
    /// The pod subnet each host that answered has recorded (`None`: never had one).
    pub subnets: BTreeMap<String, Option<Ipv4Net>>,
    /// The WireGuard public key each host that answered reported (older agents report none).
    pub mesh_keys: BTreeMap<String, String>,
    pub observed: BTreeMap<String, Vec<PodStatus>>,
    /// The digest of the service map each host holds for the project (absent: none).
    pub service_maps: BTreeMap<String, String>,
    pub unreachable: BTreeMap<String, String>,
}

/// Each host's place in the fleet network (its pod subnet, routes to the others'), when it can be
/// decided safely: every host of the fleet answered (a silent host may hold a subnet we would give
/// away) and every address is IPv4 (host-gw routes go via it). Otherwise no network is sent —
/// hosts keep what they recorded — and the reason is returned as a warning.
pub fn fleet_networks(
    fleet: &Fleet,
    connected: &Connected,
) -> (BTreeMap<String, HostNetwork>, Option<String>) {
    let none = |why: String| (BTreeMap::new(), Some(why));
    if let Some((host, _)) = connected.unreachable.iter().next() {
        return none(format!(
            "pod networks left as they are: `{host}` did not answer, and its subnet must not be given away"
        ));
    }
    let mut addresses = BTreeMap::new();
    for host in &fleet.hosts {
        match host.address.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => {
                addresses.insert(host.name.clone(), ip);
            }
            Err(_) => {
                return none(format!(
                    "pod networks left as they are: `{}` has the address `{}`, not IPv4 (routes between hosts go via IPv4 addresses)",
                    host.name, host.address
                ))
            }
        }
    }
    let cidr = fleet.network.cidr();
    match net::assign_subnets(cidr, &connected.subnets) {
        Ok(subnets) => {
            let mut networks = net::host_networks(cidr, &subnets, &addresses);
            // Peers that are not on-link are reached through the mesh (each host decides).
            crate::proto::mesh::add_mesh_on(
                &mut networks,
                fleet.network.mode,
                fleet.network.port(),
                &connected.mesh_keys,
            );
            (networks, None)
        }
        Err(e) => none(format!("pod networks left as they are: {e}")),
    }
}

/// Connects to every host of `fleet` in parallel: SSH, the agent (pushed where missing), `Hello`,
/// then one `Status` of `project`.
pub async fn connect(
    fleet: &Fleet,
    project: &str,
    opts: &ssh::Options,
    emit: &mut dyn FnMut(Progress),
) -> Result<Connected, ExecError> {
    let agent = Arc::new(
        AgentBinary::locate(opts.agent_binary.as_deref()).map_err(|e| match e.class {
            ErrorClass::Input => ExecError::User(e.to_string()),
            _ => ExecError::Internal(e.to_string()),
        })?,
    );
    let transport = Arc::new(Hosts::new(opts).map_err(|e| ExecError::Internal(e.to_string()))?);
    let mut tasks = JoinSet::new();
    for target in SshTarget::all(fleet) {
        let transport = transport.clone();
        let agent = agent.clone();
        let timeout = opts.command_timeout;
        let project = project.to_string();
        tasks.spawn(async move {
            let result = async {
                let session = transport.connect(&target).await?;
                let remote = ssh::Remote::of(&session, &target)?;
                let (client, report) =
                    ssh::connect_agent_to(&session, &remote, &agent, timeout).await?;
                let conn = HostConn::new(target.name.clone(), client, session);
                conn.offered(&report.facts);
                let status = conn.status_report(&project, timeout).await?;
                Ok::<_, SshError>((conn, report, status))
            }
            .await;
            (target.name, result)
        });
    }
    let mut out = Connected {
        hosts: BTreeMap::new(),
        facts: plan::Facts::new(),
        subnets: BTreeMap::new(),
        mesh_keys: BTreeMap::new(),
        observed: BTreeMap::new(),
        service_maps: BTreeMap::new(),
        unreachable: BTreeMap::new(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (name, result) =
            joined.map_err(|e| ExecError::Internal(format!("a host task failed: {e}")))?;
        match result {
            Ok((conn, report, status)) => {
                let pods = status.pods;
                if let Some(digest) = status.service_map {
                    out.service_maps.insert(name.clone(), digest);
                }
                emit(Progress::Connected {
                    host: name.clone(),
                    pods: pods.len(),
                    rtt: report.rtt,
                });
                out.subnets.insert(name.clone(), report.facts.pod_subnet);
                if let Some(mesh) = &report.facts.mesh {
                    out.mesh_keys.insert(name.clone(), mesh.public_key.clone());
                }
                out.facts.insert(
                    name.clone(),
                    HostFacts {
                        cpus: f64::from(report.facts.cpus),
                        memory: report.facts.memory,
                        arch: report.facts.arch,
                    },
                );
                out.observed.insert(name.clone(), pods);
                out.hosts.insert(name, Arc::new(conn));
            }
            Err(e) => {
                emit(Progress::Unreachable {
                    host: name.clone(),
                    reason: e.to_string(),
                });
                out.unreachable.insert(name, e.to_string());
            }
        }
    }
    Ok(out)
}

/// `--on-unreachable`, decided right after [`connect`] and before anything changes: with `fail`
/// a host that did not answer is an error naming it; with `skip` or `reschedule` the returned
/// options carry the mode and, per host that did not answer, the replicas recorded there (the
/// service map the others hold: [`recorded_on`]).
pub async fn on_unreachable(
    mut opts: Options,
    connected: &Connected,
    mode: OnUnreachable,
    project: &str,
) -> Result<Options, ExecError> {
    opts.on_unreachable = mode;
    if connected.unreachable.is_empty() {
        return Ok(opts);
    }
    if mode == OnUnreachable::Fail {
        return Err(ExecError::User(unreachable_error(&connected.unreachable)));
    }
    let lost: BTreeSet<String> = connected.unreachable.keys().cloned().collect();
    (opts.lost, opts.lost_pods) = recorded_on(
        &connected.hosts,
        project,
        &lost,
        opts.ssh.command_timeout.min(opts.lost_after),
    )
    .await;
    Ok(opts)
}

/// The error of `--on-unreachable fail` (the default): every host that did not answer, why, and
/// the other modes.
pub fn unreachable_error(unreachable: &BTreeMap<String, String>) -> String {
    let n = unreachable.len();
    let mut m = format!(
        "{} did not answer; nothing was changed on any host:",
        if n == 1 {
            "1 host".to_string()
        } else {
            format!("{n} hosts")
        }
    );
    for (host, why) in unreachable {
        m.push_str(&format!("\n  {host}: {why}"));
    }
    m.push_str(
        "\n  = help: `up --on-unreachable skip` deploys to the hosts that answer and leaves the \
         others' pods as they are; `--on-unreachable reschedule` also moves their replicas to \
         the hosts that answer, as far as they fit",
    );
    m
}

/// The replicas that the service map held by the hosts that answer places on each host of `lost`
/// (every host of `lost` is a key, with nothing when none is recorded), and the same as pods (in
/// the state `unreachable`). The map is the one the last `up` pushed everywhere, so any host that
/// answers knows where every replica ran then.
async fn recorded_on(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    lost: &BTreeSet<String>,
    timeout: Duration,
) -> (
    BTreeMap<String, Vec<crate::schedule::Observed>>,
    BTreeMap<String, Vec<PodStatus>>,
) {
    let mut tasks = JoinSet::new();
    for conn in hosts.values() {
        let (conn, project) = (conn.clone(), project.to_string());
        tasks.spawn(async move { conn.call(Request::ServicesHeld { project }, timeout).await });
    }
    let mut found: BTreeSet<crate::schedule::Observed> = BTreeSet::new();
    // (host, pod) → its address and containers (service, replica).
    type Containers = BTreeSet<(String, u32)>;
    let mut pods: BTreeMap<(String, String), (String, Containers)> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        // A host without a map (or an older agent) knows nothing: the others may.
        let Ok(Ok(Response::ServicesHeld { map: Some(map) })) = joined else {
            continue;
        };
        for service in &map.services {
            for e in service.replicas.iter().filter(|e| lost.contains(&e.host)) {
                found.insert(crate::schedule::Observed {
                    service: service.name.clone(),
                    replica: e.replica,
                    host: e.host.clone(),
                });
                // The map names instances; a start-first replacement's twin is its pod's.
                let pod = crate::proto::pod_of_instance(&e.pod).to_string();
                pods.entry((e.host.clone(), pod))
                    .or_insert_with(|| (e.addr.to_string(), BTreeSet::new()))
                    .1
                    .insert((service.name.clone(), e.replica));
            }
        }
    }
    let mut out: BTreeMap<String, Vec<crate::schedule::Observed>> =
        lost.iter().map(|h| (h.clone(), Vec::new())).collect();
    for o in found {
        out.entry(o.host.clone()).or_default().push(o);
    }
    let mut statuses: BTreeMap<String, Vec<PodStatus>> = BTreeMap::new();
    for ((host, name), (ip, containers)) in pods {
        statuses.entry(host).or_default().push(PodStatus {
            project: project.to_string(),
            name,
            spec_hash: String::new(),
            ip: Some(ip),
            instance: None,
            outgoing: None,
            containers: containers
                .into_iter()
                .map(|(service, replica)| crate::proto::ContainerStatus {
                    service,
                    replica,
                    state: "unreachable".into(),
                    health: None,
                    pid: None,
                    exit_code: None,
                    restarts: 0,
                    started_at: None,
                    stopped: false,
                })
                .collect(),
        });
    }
    (out, statuses)
}

/// Opens a fresh channel to one host: a new SSH session, the agent (pushed where missing) and
/// its handshake. For a channel that dropped mid-run ([`HostConn::adopt`]).
pub async fn open_host(target: &SshTarget, opts: &ssh::Options) -> Result<HostConn, SshError> {
    let agent = AgentBinary::locate(opts.agent_binary.as_deref())?;
    let transport = Hosts::new(opts)?;
    let session = transport.connect(target).await?;
    let remote = ssh::Remote::of(&session, target)?;
    let (client, report) =
        ssh::connect_agent_to(&session, &remote, &agent, opts.command_timeout).await?;
    let conn = HostConn::new(target.name.clone(), client, session);
    conn.offered(&report.facts);
    Ok(conn)
}

/// What `up` will do, worked out before anything changes.
#[derive(Debug)]
pub struct Prepared {
    pub desired: Desired,
    pub diff: Diff,
    pub flow: Flow,
    /// What the specs leave out, and orphans left running.
    pub warnings: Vec<String>,
    /// With `--on-unreachable reschedule`: the replicas that could not be placed on the hosts
    /// that answer, explained (the run goes on without them).
    pub unplaced: Vec<String>,
}

/// Places (sticky to `observed`), builds the desired pods, diffs and prepares the flow. Pure.
pub fn prepare(
    project: &Project,
    graph: &ServiceGraph,
    fleet: &Fleet,
    facts: &plan::Facts,
    observed: &BTreeMap<String, Vec<PodStatus>>,
    opts: &Options,
) -> Result<Prepared, ExecError> {
    let managed = managed(project, graph, &opts.services)?;
    let running: Vec<crate::schedule::Observed> = observed
        .iter()
        .flat_map(|(host, pods)| {
            pods.iter().flat_map(move |p| {
                p.containers.iter().map(move |c| crate::schedule::Observed {
                    service: c.service.clone(),
                    replica: c.replica,
                    host: host.clone(),
                })
            })
        })
        .collect();
    let running = with_lost(running, opts);
    let placement = match plan::plan_with_facts(project, fleet, facts, &running) {
        Ok(p) => p,
        Err(PlanError::Project(d)) => return Err(ExecError::Project(d)),
        Err(PlanError::Fleet(m)) => return Err(ExecError::User(m)),
    };
    let unplaced: Vec<String> = placement
        .unschedulable
        .iter()
        .filter(|u| u.services.iter().any(|s| managed.contains(s)))
        .map(|u| u.explain())
        .collect();
    let rescheduling = opts.on_unreachable == OnUnreachable::Reschedule && !opts.lost.is_empty();
    if !unplaced.is_empty() && !rescheduling {
        return Err(ExecError::User(format!(
            "{} cannot be placed on this fleet (nothing was changed):\n  {}\n  \
             (`compose-fleet plan` shows where everything goes)",
            if unplaced.len() == 1 {
                "1 replica".to_string()
            } else {
                format!("{} replicas", unplaced.len())
            },
            unplaced.join("\n  ")
        )));
    }
    let mut specs =
        podspec::build(project, graph.pod_model(), &placement).map_err(|e| match e {
            podspec::PodSpecError::NoImage(_) => ExecError::User(e.to_string()),
            podspec::PodSpecError::Split { .. } => ExecError::Internal(format!("bug: {e}")),
        })?;
    podspec::attach_files(&mut specs, project, &opts.files);
    let mut warnings = specs.warnings;
    warnings.extend(lost_notes(opts, &placement, &unplaced));
    let inputs: Vec<desired::PodInput> = specs
        .pods
        .into_iter()
        .filter(|p| {
            p.spec
                .containers
                .iter()
                .all(|c| managed.contains(&c.service))
        })
        // Nothing can be sent to a host that did not answer: what runs there stays.
        .filter(|p| !opts.lost.contains_key(&p.host))
        .collect();
    let defined: BTreeSet<String> = project
        .services
        .keys()
        .chain(project.disabled.keys())
        .cloned()
        .collect();
    let desired = desired::build(inputs, &BTreeMap::new(), managed.clone(), defined)
        .map_err(|e| ExecError::Internal(format!("bug: {e}")))?;
    let observed: Observed = observed
        .iter()
        .map(|(host, pods)| {
            let pods = pods
                .iter()
                .map(|p| ObservedPod {
                    name: p.name.clone(),
                    spec_hash: p.spec_hash.clone(),
                    services: p.containers.iter().map(|c| c.service.clone()).collect(),
                    stopped: p.containers.iter().any(|c| c.stopped),
                    outgoing: p.outgoing.is_some(),
                })
                .collect();
            (host.clone(), pods)
        })
        .collect();
    let diff = diff::diff(&desired, &observed, opts.remove_orphans);
    for (host, pod) in diff.orphans() {
        warnings.push(format!(
            "pod `{pod}` on `{host}` runs a service the compose file no longer defines; \
             `up --remove-orphans` removes it"
        ));
    }
    let deps: Vec<Dependency> = graph
        .edges()
        .into_iter()
        .filter(|e| managed.contains(&e.from) && managed.contains(&e.to))
        .map(Dependency::from)
        .collect();
    let mut flow = Flow::new(&desired, &diff, &deps, flow::Options { wait: opts.wait })
        .map_err(|e| ExecError::User(format!("{e}\n  = help: {}", e.hint())))?;
    // Rolling updates: each service's replicas replaced `update_config.parallelism` at a time.
    flow.set_rolling(
        managed
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    super::release::policy(project, s, false).parallelism,
                )
            })
            .collect(),
    );
    // Order (start-first unless a host port forbids it) and `max_failure_ratio`.
    warnings.extend(super::rollout::configure(
        &mut flow, project, &managed, &desired, &diff,
    ));
    Ok(Prepared {
        desired,
        diff,
        flow,
        warnings,
        unplaced: if rescheduling { unplaced } else { Vec::new() },
    })
}

/// The replicas placement starts from: those running on the hosts that answered, and with
/// `--on-unreachable skip` those recorded on the hosts that did not (placement keeps them there),
/// unless a copy runs on a host that answered. With `reschedule` the hosts that did not answer
/// are gone: none of their replicas is passed, so placement puts them on the others.
fn with_lost(
    mut running: Vec<crate::schedule::Observed>,
    opts: &Options,
) -> Vec<crate::schedule::Observed> {
    if opts.on_unreachable != OnUnreachable::Skip {
        return running;
    }
    let answered: BTreeSet<(String, u32)> = running
        .iter()
        .map(|o| (o.service.clone(), o.replica))
        .collect();
    running.extend(
        opts.lost
            .values()
            .flatten()
            .filter(|o| !answered.contains(&(o.service.clone(), o.replica)))
            .cloned(),
    );
    running
}

/// What the user hears about each host that did not answer: what stays there (`skip`), where its
/// replicas go and what could not be placed (`reschedule`).
fn lost_notes(
    opts: &Options,
    placement: &crate::schedule::Placement,
    unplaced: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for (host, recorded) in &opts.lost {
        let names: Vec<String> = recorded
            .iter()
            .map(|o| format!("{}-{}", o.service, o.replica))
            .collect();
        let listed = if names.is_empty() {
            "no replica of this project is recorded there".to_string()
        } else {
            names.join(", ")
        };
        match opts.on_unreachable {
            OnUnreachable::Fail => {}
            OnUnreachable::Skip => out.push(format!(
                "host `{host}` did not answer: its pods are left as they are ({listed});                  `--on-unreachable skip`"
            )),
            OnUnreachable::Reschedule => {
                let moved: Vec<String> = recorded
                    .iter()
                    .filter_map(|o| {
                        placement
                            .replicas()
                            .find(|r| r.service == o.service && r.replica == o.replica)
                            .map(|r| format!("{}-{} → {}", o.service, o.replica, r.host))
                    })
                    .collect();
                out.push(format!(
                    "host `{host}` did not answer and is treated as gone (`--on-unreachable \
                     reschedule`; recorded there: {listed}){}; its stale copies are removed by \
                     the first `up` after it answers again",
                    if moved.is_empty() {
                        String::new()
                    } else {
                        format!("; moved: {}", moved.join(", "))
                    }
                ));
            }
        }
    }
    if opts.on_unreachable == OnUnreachable::Reschedule && !opts.lost.is_empty() {
        for u in unplaced {
            out.push(format!("could not place on the hosts that answer: {u}"));
        }
    }
    out
}

/// The largest secret or config read: Kubernetes caps a Secret at 1 MiB (docker at 500 KB), and
/// each travels in one protocol line to every host that runs a user of it.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads the contents of the secrets and configs the project's services use, on this machine:
/// `file:` (the loader made it absolute), `environment:` (this process's environment) or
/// `content:`. `external` ones are left out (`attach_files` warns). Errors name the secret or
/// config and never its content.
pub fn read_files(project: &Project) -> Result<podspec::FileContents, ExecError> {
    use crate::compose::model::FileObject;
    let mut out = podspec::FileContents::default();
    let used = |secret: bool| -> BTreeSet<&str> {
        project
            .services
            .values()
            .flat_map(|s| if secret { &s.secrets } else { &s.configs })
            .map(|r| r.source.as_str())
            .collect()
    };
    for secret in [true, false] {
        let kind = if secret { "secret" } else { "config" };
        let defined = if secret {
            &project.secrets
        } else {
            &project.configs
        };
        for name in used(secret) {
            let Some(obj) = defined.get(name) else {
                continue;
            };
            let read = |obj: &FileObject| -> Result<Option<Vec<u8>>, String> {
                if obj.external {
                    return Ok(None);
                }
                if let Some(content) = &obj.content {
                    return Ok(Some(content.clone().into_bytes()));
                }
                if let Some(var) = &obj.environment {
                    return std::env::var_os(var)
                        .map(|v| Some(v.into_encoded_bytes()))
                        .ok_or_else(|| format!("the environment variable `{var}` is not set"));
                }
                if let Some(file) = &obj.file {
                    let meta =
                        std::fs::metadata(file).map_err(|e| format!("reading {file}: {e}"))?;
                    if meta.len() > MAX_FILE_BYTES {
                        return Err(format!(
                            "{file} is {} bytes, over the {MAX_FILE_BYTES}-byte bound for a {kind}",
                            meta.len()
                        ));
                    }
                    return std::fs::read(file)
                        .map(Some)
                        .map_err(|e| format!("reading {file}: {e}"));
                }
                Err("it has no `file`, `environment` or `content`".to_string())
            };
            match read(obj) {
                Ok(Some(bytes)) if bytes.len() as u64 > MAX_FILE_BYTES => {
                    return Err(ExecError::User(format!(
                        "{kind} `{name}` is {} bytes, over the {MAX_FILE_BYTES}-byte bound",
                        bytes.len()
                    )))
                }
                Ok(Some(bytes)) => {
                    let map = if secret {
                        &mut out.secrets
                    } else {
                        &mut out.configs
                    };
                    map.insert(name.to_string(), bytes);
                }
                Ok(None) => {}
                Err(why) => {
                    return Err(ExecError::User(format!(
                        "{kind} `{name}` of project `{}` cannot be delivered: {why}",
                        project.name
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// The services a run converges: all, or the named ones with everything they depend on and
/// share a pod with.
fn managed(
    project: &Project,
    graph: &ServiceGraph,
    named: &[String],
) -> Result<BTreeSet<String>, ExecError> {
    if named.is_empty() {
        return Ok(project.services.keys().cloned().collect());
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for s in named {
        if !project.services.contains_key(s) {
            let known: Vec<&str> = project.services.keys().map(String::as_str).collect();
            return Err(ExecError::User(format!(
                "no service `{s}` in project `{}` (services: {})",
                project.name,
                known.join(", ")
            )));
        }
        todo.push(s.clone());
    }
    while let Some(s) = todo.pop() {
        if !out.insert(s.clone()) {
            continue;
        }
        todo.extend(graph.dependencies(&s).into_iter().map(|e| e.to.clone()));
        if let Some(pod) = graph.pod_of(&s) {
            todo.extend(pod.services.iter().cloned());
        }
    }
    Ok(out)
}

/// A container the run started and watches until it exits or the run ends.
#[derive(Debug)]
struct Watch {
    pod: String,
    hash: String,
    /// The agent's change number after the apply that started it: a watched status numbered
    /// below it predates the apply and says nothing about these containers.
    after: u64,
    started: bool,
    health_said: bool,
    /// Restarts already said to the user.
    restarts_said: u32,
}

enum Answer {
    Applied {
        host: String,
        pod: String,
        /// [`crate::proto::ApplyReport::changes`].
        changes: u64,
    },
    Event(Event),
}

/// How long an agent holds a `Watch` with nothing to say. Well within `lost_after`, so that a
/// quiet host answers in time and only a silent one is lost.
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// Watches one host's pods for the rest of the run: a `Watch` always outstanding, each answer
/// (the status after any change, or after [`WATCH_WAIT`] of none) sent on `tx`. Ends after an
/// error that loses the host; after another error, asks again `retry` later.
async fn watch_host(
    conn: Arc<HostConn>,
    project: String,
    lost_after: Duration,
    retry: Duration,
    tx: mpsc::Sender<(String, Result<WatchReport, SshError>)>,
) {
    let wait = WATCH_WAIT.min(lost_after / 2);
    let mut since = 0;
    loop {
        let result = conn.watch(&project, since, wait, lost_after).await;
        let (fatal, failed) = match &result {
            Ok(w) => {
                since = w.changes;
                (false, false)
            }
            Err(e) => (
                matches!(e.class, ErrorClass::Unreachable | ErrorClass::Timeout),
                true,
            ),
        };
        if tx.send((conn.name.clone(), result)).await.is_err() || fatal {
            return;
        }
        if failed {
            tokio::time::sleep(retry).await;
        }
    }
}

/// Drives `prepared.flow` to its end over `hosts`; returns the summary (also given as
/// `Progress::Done`).
pub async fn run(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    networks: &BTreeMap<String, HostNetwork>,
    project: &str,
    insecure_registries: &[String],
    mut prepared: Prepared,
    opts: &Options,
    emit: &mut dyn FnMut(Progress),
) -> Summary {
    for w in prepared.warnings.drain(..) {
        emit(Progress::Warning(w));
    }
    let specs: BTreeMap<(String, String), PodSpec> = prepared
        .desired
        .pods()
        .map(|p| ((p.host.clone(), p.name.clone()), p.spec.clone()))
        .collect();
    let flow = &mut prepared.flow;
    let mut actions: VecDeque<Action> = flow.start().into();
    let mut events: VecDeque<Event> = VecDeque::new();
    let mut tasks: JoinSet<Answer> = JoinSet::new();
    let mut watched: BTreeMap<At, Watch> = BTreeMap::new();
    // Hosts whose agent answers `Watch` are watched by one task each (started with the first
    // pod to watch there, ended with the run); the others are polled every `opts.poll`.
    let (watch_tx, mut watch_rx) = mpsc::channel::<(String, Result<WatchReport, SshError>)>(64);
    let mut watchers: JoinSet<()> = JoinSet::new();
    let mut watching: BTreeSet<String> = BTreeSet::new();
    // Each watched host's last answer: a pod applied after it came is checked against it at
    // once (its containers may have started, even turned healthy, before the apply's answer).
    let mut latest: BTreeMap<String, WatchReport> = BTreeMap::new();
    let deadline = Instant::now() + opts.timeout;
    let mut aborted = false;
    let mut idle_rounds = 0u32;
    let mut publisher = Publisher::default();
    let mut lease_lost = opts.lease_lost.clone();
    let mut lost: Option<String> = None;
    // Once the lock is lost nothing is watched any more: a pod applied just before may already
    // have been replaced by the deploy that holds the lock now, and would never be seen start.
    let mut unwatched = false;
    // One listener for the whole run: a `ctrl_c()` made anew in each round would miss a SIGINT
    // that arrives while a round polls the hosts (found as an interrupt ignored until the
    // deadline).
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    // Pulls go to the agents as soon as the flow asks (at its start, for every pod it will create
    // or replace): one `Pull` per host with all its images, each image's `PullDone` as it lands,
    // while the flow waits for dependencies. They answer on their own channel.
    let (pulled_tx, mut pulled) = mpsc::channel::<Event>(256);
    let mut pulls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pulling: JoinSet<()> = JoinSet::new();
    // Services of which a replica was already replaced in this run (for `update_config.delay`).
    let mut rolled: BTreeSet<String> = BTreeSet::new();
    // Set at the first failure or abort: a replace still waiting out its delay is not sent.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        for (host, images) in std::mem::take(&mut pulls) {
            let Some(conn) = hosts.get(&host).cloned() else {
                events.push_back(Event::HostLost {
                    host,
                    reason: "not connected".into(),
                });
                continue;
            };
            pulling.spawn(pull_ahead(
                conn,
                images,
                opts.registry_auth.clone(),
                insecure_registries.to_vec(),
                opts.request_timeout,
                pulled_tx.clone(),
            ));
        }
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Pull { host, image } => pulls.entry(host).or_default().push(image),
                Action::Create { ref host, ref pod }
                | Action::Replace { ref host, ref pod }
                | Action::Restart { ref host, ref pod } => {
                    emit(Progress::Issued(action.clone()));
                    let restart = matches!(action, Action::Restart { .. });
                    let (host, pod) = (host.clone(), pod.clone());
                    let Some(conn) = hosts.get(&host).cloned() else {
                        events.push_back(Event::HostLost {
                            host,
                            reason: "not connected".into(),
                        });
                        continue;
                    };
                    let Some(spec) = specs.get(&(host.clone(), pod.clone())).cloned() else {
                        events.push_back(Event::ActionFailed {
                            host,
                            pod,
                            reason: "bug: no spec for this pod".into(),
                        });
                        continue;
                    };
                    let mut delay = Duration::ZERO;
                    if matches!(action, Action::Replace { .. }) {
                        for c in &spec.containers {
                            if !rolled.insert(c.service.clone()) {
                                let d = opts.update_delay.get(&c.service).copied();
                                delay = delay.max(d.unwrap_or_default());
                            }
                        }
                    }
                    let network = networks.get(&host);
                    let mut req = apply_pods(
                        project,
                        &opts.registry_auth,
                        insecure_registries,
                        network,
                        vec![spec],
                        Vec::new(),
                        opts.fences.get(&host).copied(),
                    );
                    if matches!(action, Action::Replace { .. }) && flow.start_first(&host, &pod) {
                        super::rollout::ask_start_first(&mut req, &pod);
                    }
                    let first = restart.then(|| {
                        apply_pods(
                            project,
                            &opts.registry_auth,
                            insecure_registries,
                            network,
                            Vec::new(),
                            vec![pod.clone()],
                            opts.fences.get(&host).copied(),
                        )
                    });
                    let timeout = opts.request_timeout;
                    // `delay` between the replicas of a service: the next one waits; the old
                    // copy keeps serving until its replacement is applied.
                    let stopping = stopping.clone();
                    tasks.spawn(async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                            if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                                return Answer::Event(Event::ActionFailed {
                                    host,
                                    pod,
                                    reason:
                                        "not replaced: the deploy stopped during its update delay"
                                            .into(),
                                });
                            }
                        }
                        let result = async {
                            if let Some(first) = first {
                                conn.call(first, timeout).await?;
                            }
                            conn.call(req, timeout).await
                        }
                        .await;
                        match result {
                            Ok(Response::Applied(r)) => Answer::Applied {
                                host,
                                pod,
                                changes: r.changes,
                            },
                            Ok(other) => Answer::Event(Event::ActionFailed {
                                reason: unexpected(&host, "ApplyPods", &other).to_string(),
                                host,
                                pod,
                            }),
                            Err(e) => Answer::Event(lost_or_failed(host, pod, e)),
                        }
                    });
                }
                Action::Remove {
                    ref host, ref pod, ..
                } => {
                    emit(Progress::Issued(action.clone()));
                    let (host, pod) = (host.clone(), pod.clone());
                    let Some(conn) = hosts.get(&host).cloned() else {
                        events.push_back(Event::HostLost {
                            host,
                            reason: "not connected".into(),
                        });
                        continue;
                    };
                    let req = apply_pods(
                        project,
                        &opts.registry_auth,
                        insecure_registries,
                        networks.get(&host),
                        Vec::new(),
                        vec![pod.clone()],
                        opts.fences.get(&host).copied(),
                    );
                    let timeout = opts.request_timeout;
                    tasks.spawn(async move {
                        match conn.call(req, timeout).await {
                            Ok(_) => Answer::Event(Event::Removed { host, pod }),
                            Err(e) => Answer::Event(lost_or_failed(host, pod, e)),
                        }
                    });
                }
                Action::Retire { ref host, ref pod } => {
                    emit(Progress::Issued(action.clone()));
                    let (host, pod) = (host.clone(), pod.clone());
                    let Some(conn) = hosts.get(&host).cloned() else {
                        events.push_back(Event::HostLost {
                            host,
                            reason: "not connected".into(),
                        });
                        continue;
                    };
                    // Every host's map leaves the old generation out before it stops: the
                    // push in flight (with older statuses) lands first, then this one.
                    publisher.finish().await;
                    let mut req = apply_pods(
                        project,
                        &opts.registry_auth,
                        insecure_registries,
                        networks.get(&host),
                        Vec::new(),
                        Vec::new(),
                        opts.fences.get(&host).copied(),
                    );
                    super::rollout::ask_retire(&mut req, &pod);
                    let (map, timeout) = (opts.service_map.clone(), opts.request_timeout);
                    let all = hosts.clone();
                    tasks.spawn(async move {
                        Answer::Event(
                            super::rollout::retire(&all, &conn, map, req, host, pod, timeout).await,
                        )
                    });
                }
                Action::Warn(w) => emit(Progress::Warning(w)),
                Action::Fail(f) => {
                    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                    emit(Progress::Failed(f))
                }
                Action::Done(summary) => {
                    // A map pushed now must not land after the one `up` pushes at its end.
                    publisher.finish().await;
                    emit(Progress::Done(summary.clone()));
                    return summary;
                }
            }
        }
        if let Some(event) = events.pop_front() {
            given_up(hosts, &event);
            emit(Progress::Event(event.clone()));
            // A container that exited non-zero or turned unhealthy: its last lines say why.
            let troubled = match &event {
                Event::Exited(at, code) if *code != 0 => Some(at),
                Event::Unhealthy(at) => Some(at),
                _ => None,
            };
            if let Some(at) = troubled {
                if let Some(conn) = hosts.get(&at.host) {
                    let lines = last_logs(conn, project, at, opts.request_timeout).await;
                    if !lines.is_empty() {
                        emit(Progress::Logs {
                            at: at.clone(),
                            lines,
                        });
                    }
                }
            }
            actions.extend(flow.on(event));
            idle_rounds = 0;
            continue;
        }
        if !aborted && (Instant::now() >= deadline || lost.is_some()) {
            aborted = true;
            unwatched = lost.is_some();
            events.push_back(Event::Abort {
                reason: lost.take().unwrap_or_else(|| {
                    format!(
                        "the deploy did not finish within {}s (`--timeout`)",
                        opts.timeout.as_secs()
                    )
                }),
            });
            // What never started will not: its pod's action is answered as failed.
            let pending: BTreeSet<(String, String)> = watched
                .iter()
                .filter(|(_, w)| !w.started)
                .map(|(at, w)| (at.host.clone(), w.pod.clone()))
                .collect();
            for (host, pod) in pending {
                watched.retain(|at, w| !(at.host == host && w.pod == pod));
                events.push_back(Event::ActionFailed {
                    host,
                    pod,
                    reason: "its containers did not start before the deploy stopped".into(),
                });
            }
            continue;
        }
        if tasks.is_empty() && watched.is_empty() && pulling.is_empty() && pulls.is_empty() {
            // Nothing in flight and nothing to watch, yet no `Done`: the flow waits for something
            // that cannot come. Stop it rather than hang.
            idle_rounds += 1;
            if idle_rounds > 2 {
                let summary = Summary {
                    failures: vec![Failure {
                        host: None,
                        pod: None,
                        replica: None,
                        kind: flow::FailureKind::Aborted {
                            reason: "bug: the deploy flow stalled".into(),
                        },
                    }],
                    ..Summary::default()
                };
                publisher.finish().await;
                emit(Progress::Done(summary.clone()));
                return summary;
            }
            events.push_back(Event::Abort {
                reason: "nothing left to wait for".into(),
            });
            continue;
        }
        if !pulls.is_empty() {
            continue;
        }
        let to_watch: BTreeSet<String> = watched.keys().map(|a| a.host.clone()).collect();
        for host in to_watch {
            let Some(conn) = hosts.get(&host) else {
                continue;
            };
            if conn.watches() && conn.lost().is_none() && watching.insert(host) {
                watchers.spawn(watch_host(
                    conn.clone(),
                    project.to_string(),
                    opts.lost_after,
                    opts.poll,
                    watch_tx.clone(),
                ));
            }
        }
        let polled = watched
            .keys()
            .any(|a| hosts.get(&a.host).is_some_and(|c| !c.watches()));
        tokio::select! {
            Some((host, answer)) = watch_rx.recv() => {
                match answer {
                    Ok(report) => {
                        let before = events.len();
                        let notes = observe(&host, &report.status.pods, report.changes, &mut watched, &mut events);
                        for note in notes {
                            emit(Progress::Warning(note));
                        }
                        latest.insert(host, report);
                        if events.iter().skip(before).any(|e| matches!(e, Event::Started(_))) {
                            publisher.request(hosts, opts);
                        }
                    }
                    // A host that does not answer a `Watch` in time is lost, as one that does
                    // not answer a `Status` (a frozen agent keeps its channel open) — if
                    // anything is still watched there.
                    Err(e) if matches!(e.class, ErrorClass::Unreachable | ErrorClass::Timeout) => {
                        watching.remove(&host);
                        if watched.keys().any(|a| a.host == host) {
                            watched.retain(|at, _| at.host != host);
                            events.push_back(Event::HostLost { host, reason: e.reason() });
                        }
                    }
                    // Asked again by the watcher.
                    Err(_) => {}
                }
            }
            Some(event) = pulled.recv() => events.push_back(event),
            Some(_) = pulling.join_next(), if !pulling.is_empty() => {
                // Its events were sent before it ended: take them now, so that the stall check
                // below never sees an empty set of tasks with events still queued.
                while let Ok(event) = pulled.try_recv() {
                    events.push_back(event);
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Ok(Answer::Applied { host, pod, .. }) if unwatched => {
                        events.push_back(Event::ActionFailed {
                            host,
                            pod,
                            reason: "not watched: this deploy lost its lock".into(),
                        });
                    }
                    Ok(Answer::Applied { host, pod, changes }) => {
                        if let Some(spec) = specs.get(&(host.clone(), pod.clone())) {
                            for c in &spec.containers {
                                watched.insert(
                                    At { host: host.clone(), service: c.service.clone(), replica: c.replica },
                                    Watch { pod: pod.clone(), hash: spec.spec_hash.clone(), after: changes, started: false, health_said: false, restarts_said: 0 },
                                );
                            }
                        }
                        if let Some(report) = latest.get(&host) {
                            let before = events.len();
                            for note in observe(&host, &report.status.pods, report.changes, &mut watched, &mut events) {
                                emit(Progress::Warning(note));
                            }
                            if events.iter().skip(before).any(|e| matches!(e, Event::Started(_))) {
                                publisher.request(hosts, opts);
                            }
                        }
                    }
                    Ok(Answer::Event(e)) => events.push_back(e),
                    Err(e) => events.push_back(Event::Abort { reason: format!("bug: a request task failed: {e}") }),
                }
            }
            _ = tokio::time::sleep(opts.poll), if polled => {
                let before = events.len();
                for note in poll(hosts, project, &mut watched, &mut events, opts.lost_after).await {
                    emit(Progress::Warning(note));
                }
                let started = events.iter().skip(before).any(|e| matches!(e, Event::Started(_)));
                if started {
                    publisher.request(hosts, opts);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if !aborted => {}
            Some(reason) = async {
                match lease_lost.as_mut() {
                    Some(rx) => match rx.wait_for(Option::is_some).await {
                        Ok(reason) => reason.clone(),
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            }, if !aborted && lost.is_none() => lost = Some(reason),
            Some(_) = async {
                match interrupt.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            }, if !aborted => {
                aborted = true;
                crate::lifetime::interrupt_handled();
                events.push_back(Event::Abort { reason: "interrupted".into() });
            }
        }
    }
}

/// Pushes the service map while the deploy runs, one push at a time: a push asked for while one
/// is in flight runs once that one is done (with the statuses of then).
#[derive(Default)]
struct Publisher {
    running: Option<tokio::task::JoinHandle<()>>,
    /// Asked for again while one was in flight.
    again: Option<(BTreeMap<String, Arc<HostConn>>, Options)>,
}

impl Publisher {
    fn request(&mut self, hosts: &BTreeMap<String, Arc<HostConn>>, opts: &Options) {
        if opts.service_map.is_none() {
            return;
        }
        if self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            self.again = Some((hosts.clone(), opts.clone()));
            return;
        }
        self.again = None;
        self.running = Some(Self::spawn(hosts.clone(), opts));
    }

    fn spawn(
        hosts: BTreeMap<String, Arc<HostConn>>,
        opts: &Options,
    ) -> tokio::task::JoinHandle<()> {
        let project = opts.service_map.clone();
        let timeout = opts.request_timeout;
        tokio::spawn(async move {
            if let Some(project) = project {
                // Warnings are left to the push at the end of `up`, which reports them.
                let _ = super::services::publish(&hosts, &project, &BTreeMap::new(), timeout).await;
            }
        })
    }

    /// Waits for the push in flight and the one asked for meanwhile.
    async fn finish(&mut self) {
        if let Some(task) = self.running.take() {
            let _ = task.await;
        }
        if let Some((hosts, opts)) = self.again.take() {
            let _ = Self::spawn(hosts, &opts).await;
        }
    }
}

/// Pulls `images` on one host ahead of the pods that need them; each image's outcome becomes a
/// `PullDone`/`PullFailed` event as the agent reports it.
async fn pull_ahead(
    conn: Arc<HostConn>,
    images: Vec<String>,
    registry_auth: BTreeMap<String, crate::proto::RegistryAuth>,
    insecure_registries: Vec<String>,
    timeout: Duration,
    events: mpsc::Sender<Event>,
) {
    let host = conn.name.clone();
    let request = Request::Pull(crate::proto::PullRequest {
        images: images.clone(),
        registry_auth,
        insecure_registries,
    });
    let (tx, mut rx) = mpsc::channel(64);
    let mut said = BTreeSet::new();
    let streamed = conn.stream(request, &tx);
    tokio::pin!(streamed);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let report = |r: Response, said: &mut BTreeSet<String>| {
        let mut out = Vec::new();
        if let Response::Pulled(p) = r {
            for image in p.pulled {
                if said.insert(image.clone()) {
                    out.push(Event::PullDone {
                        host: host.clone(),
                        image,
                    });
                }
            }
            for (image, reason) in p.failed {
                if said.insert(image.clone()) {
                    out.push(Event::PullFailed {
                        host: host.clone(),
                        image,
                        reason,
                    });
                }
            }
        }
        out
    };
    let end = loop {
        tokio::select! {
            end = &mut streamed => break end.map_err(|e| e.reason()),
            Some(r) = rx.recv() => {
                for e in report(r, &mut said) {
                    let _ = events.send(e).await;
                }
            }
            _ = &mut deadline => break Err(format!("not pulled within {}s", timeout.as_secs())),
        }
    };
    let mut last = Vec::new();
    while let Ok(r) = rx.try_recv() {
        last.extend(report(r, &mut said));
    }
    match end {
        Ok(r) => last.extend(report(r, &mut said)),
        Err(reason) => {
            for image in images.into_iter().filter(|i| !said.contains(i)) {
                last.push(Event::PullFailed {
                    host: host.clone(),
                    image,
                    reason: reason.clone(),
                });
            }
        }
    }
    for e in last {
        let _ = events.send(e).await;
    }
}

fn apply_pods(
    project: &str,
    auth: &BTreeMap<String, crate::proto::RegistryAuth>,
    insecure: &[String],
    network: Option<&HostNetwork>,
    pods: Vec<PodSpec>,
    remove: Vec<String>,
    fence: Option<u64>,
) -> Request {
    Request::ApplyPods(ApplyPodsRequest {
        project: project.to_string(),
        network: network.cloned(),
        pods,
        remove,
        registry_auth: auth.clone(),
        insecure_registries: insecure.to_vec(),
        fence,
        start_first: Vec::new(),
        retire: Vec::new(),
    })
}

/// A lost host is given up on for the rest of the run ([`HostConn::mark_lost`]).
fn given_up(hosts: &BTreeMap<String, Arc<HostConn>>, event: &Event) {
    if let Event::HostLost { host, reason } = event {
        if let Some(conn) = hosts.get(host) {
            conn.mark_lost(reason);
        }
    }
}

pub(super) fn lost_or_failed(host: String, pod: String, e: SshError) -> Event {
    match e.class {
        ErrorClass::Unreachable | ErrorClass::Timeout => Event::HostLost {
            host,
            reason: e.reason(),
        },
        _ => Event::ActionFailed {
            host,
            pod,
            reason: e.reason(),
        },
    }
}

/// One `Status` per host with watched containers, in parallel; what changed becomes events.
/// Returns what the user should hear that is no event: a container that keeps restarting (a
/// dependent waiting for it would otherwise wait silently until the deadline).
async fn poll(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    watched: &mut BTreeMap<At, Watch>,
    events: &mut VecDeque<Event>,
    timeout: Duration,
) -> Vec<String> {
    let mut notes = Vec::new();
    let wanted: BTreeSet<String> = watched.keys().map(|a| a.host.clone()).collect();
    let mut tasks = JoinSet::new();
    for host in wanted {
        let Some(conn) = hosts.get(&host).cloned() else {
            continue;
        };
        // Watched by its own task ([`watch_host`]).
        if conn.watches() {
            continue;
        }
        let project = project.to_string();
        tasks.spawn(async move { (host, conn.status(&project, timeout).await) });
    }
    while let Some(Ok((host, result))) = tasks.join_next().await {
        let pods = match result {
            Ok(pods) => pods,
            // A host that does not answer a `Status` in time is lost: a frozen agent (or host)
            // keeps its channel open, and would otherwise hold the run until its deadline.
            Err(e) if matches!(e.class, ErrorClass::Unreachable | ErrorClass::Timeout) => {
                watched.retain(|at, _| at.host != host);
                events.push_back(Event::HostLost {
                    host,
                    reason: e.reason(),
                });
                continue;
            }
            // A slow answer is tried again at the next poll.
            Err(_) => continue,
        };
        // A status read now is after every apply answered before it was asked.
        notes.extend(observe(&host, &pods, u64::MAX, watched, events));
    }
    notes
}

/// What one host's status (numbered `changes`: [`Watch::after`]) says of the containers watched
/// there: `Started`/`Healthy`/`Unhealthy`/`Exited` events, each said once, and `ActionFailed` for
/// a pod whose container failed to start. Returns the notes for the user (restart loops).
fn observe(
    host: &str,
    pods: &[PodStatus],
    changes: u64,
    watched: &mut BTreeMap<At, Watch>,
    events: &mut VecDeque<Event>,
) -> Vec<String> {
    let host = host.to_string();
    let mut notes = Vec::new();
    let mut gone = Vec::new();
    let mut failed_pods = BTreeSet::new();
    for (at, w) in watched
        .iter_mut()
        .filter(|(at, w)| at.host == host && w.after <= changes)
    {
        let Some(c) = pods
            .iter()
            .filter(|p| p.name == w.pod && p.spec_hash == w.hash)
            .flat_map(|p| &p.containers)
            .find(|c| c.service == at.service && c.replica == at.replica)
        else {
            continue;
        };
        let state = c.state.as_str();
        // Said at 1, 5, 20 and 100 restarts (polls may skip a count).
        let next = [1, 5, 20, 100].into_iter().find(|t| *t > w.restarts_said);
        if next.is_some_and(|t| c.restarts >= t) {
            w.restarts_said = c.restarts;
            notes.push(format!(
                    "{at} keeps exiting and restarting ({} restart{} so far{}); see its logs on the host",
                    c.restarts,
                    if c.restarts == 1 { "" } else { "s" },
                    c.exit_code.map(|e| format!(", last exit code {e}")).unwrap_or_default()
                ));
        }
        if state == "failed" && !w.started {
            failed_pods.insert(w.pod.clone());
            continue;
        }
        if state != "created" && !w.started {
            w.started = true;
            events.push_back(Event::Started(at.clone()));
        }
        if !w.health_said {
            match c.health.as_deref() {
                Some("healthy") => {
                    w.health_said = true;
                    events.push_back(Event::Healthy(at.clone()));
                }
                Some("unhealthy") => {
                    w.health_said = true;
                    events.push_back(Event::Unhealthy(at.clone()));
                }
                _ => {}
            }
        }
        if state == "exited" || state == "failed" {
            events.push_back(Event::Exited(at.clone(), c.exit_code.unwrap_or(-1)));
            gone.push(at.clone());
        }
    }
    for at in gone {
        watched.remove(&at);
    }
    for pod in failed_pods {
        watched.retain(|at, w| !(at.host == host && w.pod == pod));
        events.push_back(Event::ActionFailed {
            host: host.clone(),
            pod,
            reason: "its container failed to start".into(),
        });
    }
    notes
}

/// The last lines a container wrote, for a failure report; empty when they cannot be read.
pub async fn last_logs(conn: &HostConn, project: &str, at: &At, timeout: Duration) -> Vec<String> {
    let request = Request::Logs(LogsRequest {
        project: project.to_string(),
        services: vec![at.service.clone()],
        tail: Some(20),
        follow: false,
        since: None,
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let collect = async {
        let mut lines = Vec::new();
        let streamed = conn.stream(request, &tx);
        tokio::pin!(streamed);
        loop {
            tokio::select! {
                done = &mut streamed => {
                    while let Ok(r) = rx.try_recv() {
                        if let Response::LogLine(l) = r {
                            lines.push(l);
                        }
                    }
                    return done.map(|_| lines);
                }
                Some(r) = rx.recv() => {
                    if let Response::LogLine(l) = r {
                        lines.push(l);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, collect)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
        .into_iter()
        // Only this replica's lines (0: an agent that does not say which).
        .filter(|l| l.replica == at.replica || l.replica == 0)
        .map(|l| l.line)
        .collect()
}

/// `down`: removes the project's pods on every connected host, in parallel, each request carrying
/// that host's deploy-lock fencing number (`fences`). Per host: the pods removed, or why not.
pub async fn remove_all(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    volumes: bool,
    fences: &BTreeMap<String, u64>,
    timeout: Duration,
) -> BTreeMap<String, Result<Vec<String>, SshError>> {
    let mut tasks = JoinSet::new();
    for (name, conn) in hosts {
        let (name, conn, project) = (name.clone(), conn.clone(), project.to_string());
        let fence = fences.get(&name).copied();
        tasks.spawn(async move {
            let r = conn
                .call(
                    Request::Remove {
                        project,
                        volumes,
                        fence,
                    },
                    timeout,
                )
                .await
                .and_then(|r| match r {
                    Response::Removed { pods } => Ok(pods),
                    other => Err(unexpected(&name, "Remove", &other)),
                });
            (name, r)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(Ok((name, r))) = tasks.join_next().await {
        out.insert(name, r);
    }
    out
}

/// A runtime for the synchronous CLI commands.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExecError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ExecError::Internal(format!("starting the async runtime: {e}")))
}

#[cfg(test)]
mod tests {
    //! `prepare`, the pure half of a run, on `examples/jobs` and a fleet of three hosts.

    use super::*;
    use crate::compose::{self, Environment, LoadOptions, RealFs};
    use crate::deploy::flow::Change;
    use crate::inventory::Host;
    use crate::proto::ContainerStatus;

    fn jobs() -> (Project, ServiceGraph) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs/compose.yaml");
        let project = compose::load(&LoadOptions::for_file(path), &Environment::new(), &RealFs)
            .expect("examples/jobs loads")
            .project;
        let graph = crate::graph::build(&project).expect("graph");
        (project, graph)
    }

    fn fleet() -> (Fleet, plan::Facts) {
        let mut fleet = Fleet {
            hosts: Vec::new(),
            registries: BTreeMap::new(),
            source: None,
            warnings: Vec::new(),
            network: Default::default(),
            build: Default::default(),
        };
        let mut facts = plan::Facts::new();
        for i in 1..=3 {
            fleet
                .hosts
                .push(Host::new(format!("h{i}"), format!("10.0.0.{i}")));
            facts.insert(
                format!("h{i}"),
                HostFacts {
                    cpus: 2.0,
                    memory: 4 << 30,
                    arch: "x86_64".into(),
                },
            );
        }
        (fleet, facts)
    }

    /// What the hosts would report after running `desired`.
    fn running(desired: &Desired) -> BTreeMap<String, Vec<PodStatus>> {
        let mut out: BTreeMap<String, Vec<PodStatus>> = BTreeMap::new();
        for p in desired.pods() {
            out.entry(p.host.clone()).or_default().push(PodStatus {
                project: "jobs".into(),
                name: p.name.clone(),
                spec_hash: p.spec_hash.clone(),
                ip: None,
                instance: None,
                outgoing: None,
                containers: p
                    .containers
                    .iter()
                    .map(|c| ContainerStatus {
                        service: c.service.clone(),
                        replica: c.replica,
                        state: "running".into(),
                        health: None,
                        pid: Some(1),
                        exit_code: None,
                        restarts: 0,
                        started_at: None,
                        stopped: false,
                    })
                    .collect(),
            });
        }
        out
    }

    #[test]
    fn a_second_run_over_what_the_first_started_changes_nothing() {
        let (project, graph) = jobs();
        let (fleet, facts) = fleet();
        let opts = Options::default();
        let first =
            prepare(&project, &graph, &fleet, &facts, &BTreeMap::new(), &opts).expect("prepares");
        let steps = first.flow.plan();
        assert_eq!(steps.len(), 6, "{steps:?}");
        assert!(steps.iter().all(|s| s.change == Change::Create));
        let api = steps.iter().find(|s| s.pod == "api-1").expect("api-1");
        assert_eq!(api.waits_for.len(), 2, "api waits for cache and migrate");
        let observed = running(&first.desired);
        let second = prepare(&project, &graph, &fleet, &facts, &observed, &opts).expect("prepares");
        assert!(second.diff.is_noop());
        assert!(second.flow.plan().is_empty());
        // Sticky: every pod stays where it runs.
        let hosts = |d: &Desired| {
            d.pods()
                .map(|p| (p.name.clone(), p.host.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(hosts(&first.desired), hosts(&second.desired));
    }

    #[test]
    fn up_of_one_service_converges_it_and_what_it_depends_on_only() {
        let (project, graph) = jobs();
        let (fleet, facts) = fleet();
        let opts = Options {
            services: vec!["api".into()],
            ..Options::default()
        };
        let p =
            prepare(&project, &graph, &fleet, &facts, &BTreeMap::new(), &opts).expect("prepares");
        let services: BTreeSet<&str> = p.desired.managed.iter().map(String::as_str).collect();
        assert_eq!(services, BTreeSet::from(["api", "cache", "migrate"]));
        assert!(p.flow.plan().iter().all(|s| !s.pod.starts_with("web")));
        let unknown = Options {
            services: vec!["nope".into()],
            ..Options::default()
        };
        assert!(matches!(
            prepare(&project, &graph, &fleet, &facts, &BTreeMap::new(), &unknown),
            Err(ExecError::User(m)) if m.contains("no service `nope`")
        ));
    }

    #[test]
    fn an_orphan_is_reported_and_removed_only_when_asked() {
        let (project, graph) = jobs();
        let (fleet, facts) = fleet();
        let first = prepare(
            &project,
            &graph,
            &fleet,
            &facts,
            &BTreeMap::new(),
            &Options::default(),
        )
        .expect("prepares");
        let mut observed = running(&first.desired);
        let mut old = observed["h1"][0].clone();
        old.name = "old-1".into();
        old.containers[0].service = "old".into();
        observed.get_mut("h1").expect("h1 runs pods").push(old);
        let kept = prepare(
            &project,
            &graph,
            &fleet,
            &facts,
            &observed,
            &Options::default(),
        )
        .expect("prepares");
        assert!(kept.flow.plan().is_empty());
        assert!(kept
            .warnings
            .iter()
            .any(|w| w.contains("old-1") && w.contains("--remove-orphans")));
        let opts = Options {
            remove_orphans: true,
            ..Options::default()
        };
        let removed =
            prepare(&project, &graph, &fleet, &facts, &observed, &opts).expect("prepares");
        let steps = removed.flow.plan();
        assert_eq!(steps.len(), 1);
        assert_eq!(
            (steps[0].pod.as_str(), &steps[0].change),
            ("old-1", &Change::Remove(diff::RemoveReason::Orphan))
        );
    }

    /// A fleet where `lost` did not answer after `first` ran: the others' observed pods and
    /// facts, and the replicas the service map records on `lost`.
    fn without(
        first: &Prepared,
        lost: &str,
    ) -> (
        BTreeMap<String, Vec<PodStatus>>,
        plan::Facts,
        Vec<crate::schedule::Observed>,
    ) {
        let mut observed = running(&first.desired);
        let recorded = observed
            .remove(lost)
            .unwrap_or_default()
            .iter()
            .flat_map(|p| &p.containers)
            .map(|c| crate::schedule::Observed {
                service: c.service.clone(),
                replica: c.replica,
                host: lost.to_string(),
            })
            .collect();
        let (_, mut facts) = fleet();
        facts.remove(lost);
        (observed, facts, recorded)
    }

    /// `--on-unreachable skip`: nothing is planned for the lost host, and its replicas are not
    /// started anywhere else; `reschedule`: they are, on the hosts that answer.
    #[test]
    fn a_lost_hosts_replicas_stay_with_skip_and_move_with_reschedule() {
        let (project, graph) = jobs();
        let (fleet, facts) = fleet();
        let first = prepare(
            &project,
            &graph,
            &fleet,
            &facts,
            &BTreeMap::new(),
            &Options::default(),
        )
        .expect("prepares");
        let lost = first
            .desired
            .pods()
            .map(|p| p.host.clone())
            .find(|h| h != "h1")
            .expect("pods on a second host");
        let (observed, facts, recorded) = without(&first, &lost);
        assert!(!recorded.is_empty());
        let opts = |mode| Options {
            on_unreachable: mode,
            lost: BTreeMap::from([(lost.clone(), recorded.clone())]),
            ..Options::default()
        };
        let skip = prepare(
            &project,
            &graph,
            &fleet,
            &facts,
            &observed,
            &opts(OnUnreachable::Skip),
        )
        .expect("prepares");
        assert!(skip.diff.is_noop(), "{:?}", skip.flow.plan());
        assert!(skip.desired.pods().all(|p| p.host != lost));
        assert!(skip
            .warnings
            .iter()
            .any(|w| w.contains(&format!("`{lost}` did not answer")) && w.contains("left as")));
        let moved = prepare(
            &project,
            &graph,
            &fleet,
            &facts,
            &observed,
            &opts(OnUnreachable::Reschedule),
        )
        .expect("prepares");
        let created: BTreeSet<String> = moved
            .flow
            .plan()
            .iter()
            .filter(|s| s.change == Change::Create)
            .map(|s| s.pod.clone())
            .collect();
        let lost_pods: BTreeSet<String> = first
            .desired
            .pods()
            .filter(|p| p.host == lost)
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(created, lost_pods, "the lost host's pods start elsewhere");
        assert!(moved.desired.pods().all(|p| p.host != lost));
        assert!(moved.unplaced.is_empty());
        assert!(moved
            .warnings
            .iter()
            .any(|w| w.contains("treated as gone") && w.contains("moved:")));
    }

    /// Another laptop sees what the hosts recorded: a host keeps the subnet it reports, the
    /// inventory's CIDR and mode are used, and every host with a key gets the others as peers.
    #[test]
    fn the_fleet_network_follows_the_inventory_and_what_hosts_recorded() {
        use crate::proto::mesh::Mode;
        let mut fleet = Fleet::default();
        fleet
            .hosts
            .push(Host::new("a".to_string(), "10.0.0.1".to_string()));
        fleet
            .hosts
            .push(Host::new("b".to_string(), "10.0.1.2".to_string()));
        fleet.network = crate::inventory::NetworkSettings {
            cidr: Some("10.99.0.0/16".parse().unwrap()),
            mode: Mode::Wireguard,
            port: Some(4500),
        };
        let strings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let connected = Connected {
            hosts: BTreeMap::new(),
            facts: plan::Facts::new(),
            subnets: [
                ("a".to_string(), Some("10.99.7.0/24".parse().unwrap())),
                ("b".to_string(), None),
            ]
            .into_iter()
            .collect(),
            mesh_keys: strings(&[("a", "KA"), ("b", "KB")]),
            observed: BTreeMap::new(),
            service_maps: BTreeMap::new(),
            unreachable: BTreeMap::new(),
        };
        let (nets, why_not) = fleet_networks(&fleet, &connected);
        assert_eq!(why_not, None);
        assert_eq!(nets["a"].fleet.to_string(), "10.99.0.0/16");
        assert_eq!(nets["a"].subnet.to_string(), "10.99.7.0/24", "kept");
        assert_eq!(nets["b"].subnet.to_string(), "10.99.1.0/24");
        let mesh = nets["a"].mesh.as_ref().expect("a mesh");
        assert_eq!(mesh.mode, Mode::Wireguard);
        let peers: Vec<String> = mesh
            .peers
            .iter()
            .map(|p| format!("{} {} {}", p.host, p.public_key, p.endpoint))
            .collect();
        assert_eq!(peers, ["b KB 10.0.1.2:4500"], "the inventory's mesh port");
    }
}
