//! The deploy flow: a pure state machine that turns a [`Diff`] into actions, one event at a time.
//! No I/O, no clock: the executor feeds [`Event`]s (pull done, container started, healthy, exited,
//! host lost, ...) to [`Flow::on`] and performs the [`Action`]s it returns.
//!
//! Not in waves: a pod is created the moment (a) every `depends_on` condition of its services
//! holds, wherever the dependencies run, and (b) its images are pulled on its host. Pulls for every
//! pod to create or replace are issued at [`Flow::start`], so a dependency's wait overlaps its
//! dependents' pulls, and independent branches proceed in parallel on every host.
//!
//! Conditions are those of docker compose, over *all* replicas of the dependency:
//! - `service_started`: every replica started (an exited replica had started);
//! - `service_healthy`: every replica reported healthy; unhealthy, or exited before healthy, can
//!   never hold;
//! - `service_completed_successfully`: every replica exited with code 0; a non-zero exit can
//!   never hold;
//! - a dependency with no pod (zero replicas) holds at once; so does a pod that is **kept**
//!   (unchanged and running), which is why a deploy with nothing to change issues no action;
//! - `required: false`: a condition that can never hold is a warning, and the dependent starts;
//! - `restart: true`: a kept dependent is restarted (once its conditions hold again) when the
//!   dependency is created or replaced; restarts cascade along `restart: true` edges.
//!
//! Edges between services of the same pod do not gate: a pod's containers start together. A
//! container nobody waits for that turns unhealthy or exits non-zero is a warning; with
//! [`Options::wait`] (`up --wait`) it fails the deploy, and the flow ends only once every
//! container it started is healthy, running, or exited 0.
//!
//! Failures: a pull or pod action that fails, a lost host with work on it, an [`Event::Abort`],
//! or a required condition that can never hold is *fatal*: the flow says [`Action::Fail`] at once,
//! starts nothing new (not even the removal of moved pods, so the old copy stays), waits for the
//! actions in flight to answer, and ends with [`Action::Done`] listing what did not start.
//!
//! What the executor must guarantee for the flow to end: every issued Create/Replace/Restart is
//! answered by its containers' `Started` or `Exited`, or by `ActionFailed`/`HostLost`; every Remove
//! by `Removed`, `ActionFailed` or `HostLost`. Waits without an end (a health check that never
//! reports, a job that never exits) end with the executor's deadline, sent as [`Event::Abort`].
//! `Exited` means the container stopped for good (its restart policy will not restart it).
//!
//! [`Flow::plan`] lists the changes before anything runs, for `plan` and `up --dry-run`.
//!
//! ```text
//!  executor                               Flow
//!   │ Flow::new(desired, diff, deps, opts) ─▶ │   gates, restarts, pulls computed
//!   │ start() ──────────────────────────────▶ │
//!   │ ◀── Pull ×N, Remove (orphans, scale-down), Create (pods with nothing to wait for)
//!   │ on(PullDone) / on(Started) / on(Healthy) / on(Exited) ─▶ │
//!   │ ◀── Create / Replace / Restart as conditions hold, Remove of moved pods' old copies
//!   │ ...                                                        (Fail at the first failure)
//!   │ ◀── Done(Summary)                                          nothing more after it
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::desired::{Desired, Replica};
use super::diff::{Diff, RemoveReason};
use crate::compose::model::Condition;
use crate::graph::{condition_str, Edge};

/// `from` waits for `to` (a `depends_on`, or an implied edge: links, volumes_from, network_mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub from: String,
    pub to: String,
    pub condition: Condition,
    pub required: bool,
    pub restart: bool,
}

impl From<&Edge> for Dependency {
    fn from(e: &Edge) -> Self {
        Dependency {
            from: e.from.clone(),
            to: e.to.clone(),
            condition: e.condition,
            required: e.required,
            restart: e.restart,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// `up --wait`: done only when every container started by this run is healthy (with a
    /// healthcheck) or running (without), or has exited 0; an unhealthy container or a non-zero
    /// exit fails the deploy.
    pub wait: bool,
}

/// A container of a pod on a host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At {
    pub host: String,
    pub service: String,
    pub replica: u32,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.service, self.replica, self.host)
    }
}

/// What happened, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PullDone {
        host: String,
        image: String,
    },
    PullFailed {
        host: String,
        image: String,
        reason: String,
    },
    Started(At),
    Healthy(At),
    Unhealthy(At),
    /// The container stopped for good with this code.
    Exited(At, i32),
    Removed {
        host: String,
        pod: String,
    },
    /// The outgoing generation of a pod replaced start-first is gone (after [`Action::Retire`]).
    Retired {
        host: String,
        pod: String,
    },
    /// The agent refused or failed a Create/Replace/Restart/Remove/Retire of this pod.
    ActionFailed {
        host: String,
        pod: String,
        reason: String,
    },
    HostLost {
        host: String,
        reason: String,
    },
    /// Stop: the user interrupted, or a deadline passed.
    Abort {
        reason: String,
    },
}

/// What the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pull {
        host: String,
        image: String,
    },
    Create {
        host: String,
        pod: String,
    },
    Replace {
        host: String,
        pod: String,
    },
    /// Restart a kept pod (a `restart: true` dependency was updated).
    Restart {
        host: String,
        pod: String,
    },
    Remove {
        host: String,
        pod: String,
        reason: RemoveReason,
    },
    /// Start-first: the pod's new generation is ready, so its outgoing generation leaves the
    /// service map on every host, then is stopped (`ApplyPodsRequest::retire`). Also issued at
    /// the start for a kept pod whose outgoing generation a deploy that died left running.
    Retire {
        host: String,
        pod: String,
    },
    /// Something to tell the user that does not fail the deploy.
    Warn(String),
    /// The deploy failed; more `Fail`s may follow while actions in flight answer.
    Fail(Failure),
    /// The last action: nothing more will be asked.
    Done(Summary),
}

/// What failed, where, and what it blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub host: Option<String>,
    pub pod: Option<String>,
    pub replica: Option<Replica>,
    pub kind: FailureKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    PullFailed {
        image: String,
        reason: String,
    },
    ActionFailed {
        reason: String,
    },
    /// A required condition can never hold: `waiter` waits for it with `condition`.
    Exited {
        code: i32,
        waiter: Option<(String, Condition)>,
    },
    Unhealthy {
        waiter: Option<(String, Condition)>,
    },
    HostLost {
        reason: String,
    },
    Aborted {
        reason: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |h: &String| format!(" on `{h}`");
        let place = match (&self.replica, &self.pod, &self.host) {
            (Some(r), _, h) => Some(format!(
                "`{}` replica {}{}",
                r.service,
                r.replica,
                h.as_ref().map(on).unwrap_or_default()
            )),
            (None, Some(p), h) => Some(format!(
                "pod `{p}`{}",
                h.as_ref().map(on).unwrap_or_default()
            )),
            (None, None, Some(h)) => Some(format!("host `{h}`")),
            (None, None, None) => None,
        };
        if let Some(place) = place {
            write!(f, "{place}: ")?;
        }
        let waits = |w: &Option<(String, Condition)>| match w {
            Some((s, c)) => format!("; `{s}` waits for it ({})", condition_str(*c)),
            None => String::new(),
        };
        match &self.kind {
            FailureKind::PullFailed { image, reason } => {
                write!(f, "pulling `{image}` failed: {reason}")
            }
            FailureKind::ActionFailed { reason } => write!(f, "{reason}"),
            FailureKind::Exited { code, waiter } => {
                write!(f, "exited with code {code}{}", waits(waiter))
            }
            FailureKind::Unhealthy { waiter } => write!(f, "unhealthy{}", waits(waiter)),
            FailureKind::HostLost { reason } => write!(f, "unreachable: {reason}"),
            FailureKind::Aborted { reason } => write!(f, "stopped: {reason}"),
        }
    }
}

/// One change of the plan, as `plan` and `up --dry-run` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub host: String,
    pub pod: String,
    pub change: Change,
    /// What it waits for before it starts: the `depends_on` edges leaving its services for
    /// services outside the pod, sorted by dependency (empty for a remove).
    pub waits_for: Vec<Dependency>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Replace,
    /// A kept pod restarted because a `restart: true` dependency is updated.
    Restart,
    Remove(RemoveReason),
    /// The outgoing generation of a kept pod, left running by a deploy that ended before it
    /// retired it, is retired.
    Retire,
}

/// The outcome, with the `Done` action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub created: usize,
    pub replaced: usize,
    pub restarted: usize,
    pub removed: usize,
    /// Outgoing generations retired (start-first replacements and leftovers).
    pub retired: usize,
    pub kept: usize,
    /// Every fatal failure, in the order they happened; empty on success.
    pub failures: Vec<Failure>,
    /// Pods that were to be created, replaced or restarted and do not run as asked (never
    /// started, their action failed, or their host was lost), as `(host, pod)`.
    pub incomplete: Vec<(String, String)>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The plan cannot be carried out as written: the user's compose file is at fault (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error(
        "service `{dependent}` waits for `{service}` to be healthy (`condition: service_healthy`), \
         but `{service}` has no healthcheck"
    )]
    NoHealthcheck { dependent: String, service: String },
}

impl FlowError {
    pub fn hint(&self) -> String {
        match self {
            FlowError::NoHealthcheck { service, .. } => format!(
                "add a `healthcheck` to `{service}`, or wait for `condition: service_started`"
            ),
        }
    }
}

/// What happens to a pod in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Keep,
    Create,
    Replace,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Kept: satisfies every condition, nothing to do.
    Kept,
    /// Waiting for its conditions and pulls.
    Waiting,
    /// Action sent, containers not all started.
    Issued,
    /// Every container started (or exited).
    Up,
    /// Its action failed or its host was lost.
    Failed,
}

#[derive(Debug)]
struct Pod {
    host: String,
    name: String,
    op: Op,
    phase: Phase,
    containers: Vec<usize>,
    /// Indexes into `Flow::deps`: edges from a service of this pod to a service outside it.
    gate: Vec<usize>,
    pulls: Vec<usize>,
    /// Removes (indexes into `Flow::removes`) to issue once this pod is up: its old copies.
    then_remove: Vec<usize>,
}

#[derive(Debug, Default)]
struct Container {
    pod: usize,
    replica: Replica,
    healthchecked: bool,
    started: bool,
    healthy: bool,
    unhealthy: bool,
    exit: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullState {
    Pending,
    Done,
    Failed,
}

#[derive(Debug)]
struct Pull {
    host: String,
    image: String,
    state: PullState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoveState {
    /// Waits for the pod that replaces it elsewhere.
    Later,
    Issued,
    Done,
}

#[derive(Debug)]
struct Remove {
    host: String,
    pod: String,
    reason: RemoveReason,
    state: RemoveState,
}

/// Service → the length of the longest chain of services waiting for it through `deps`. The
/// graph has no cycles (the loader refuses them); an edge met again on the current path counts
/// nothing, so that this ends even if one slipped through.
fn chains(deps: &[Dependency]) -> BTreeMap<String, usize> {
    fn visit(
        s: &str,
        deps: &[Dependency],
        memo: &mut BTreeMap<String, usize>,
        path: &mut BTreeSet<String>,
    ) -> usize {
        if let Some(n) = memo.get(s) {
            return *n;
        }
        if !path.insert(s.to_string()) {
            return 0;
        }
        let mut n = 0;
        for d in deps.iter().filter(|d| d.to == s && d.from != s) {
            n = n.max(1 + visit(&d.from, deps, memo, path));
        }
        path.remove(s);
        memo.insert(s.to_string(), n);
        n
    }
    let mut memo = BTreeMap::new();
    for d in deps {
        visit(&d.to, deps, &mut memo, &mut BTreeSet::new());
    }
    memo
}

/// Whether a condition holds for a dependency, over all its replicas.
#[derive(Debug, Clone)]
enum Cond {
    Holds,
    Pending,
    /// Can never hold: because of this container (when it is the cause), with this failure.
    Never(Option<(usize, FailureKind)>),
}

/// The flow of one deploy. Build with [`Flow::new`], call [`Flow::start`] once, then
/// [`Flow::on`] for each event until an [`Action::Done`] comes out.
#[derive(Debug)]
pub struct Flow {
    opts: Options,
    deps: Vec<Dependency>,
    /// Optional `service_healthy` edges on services without a healthcheck: they never gate.
    ignored: BTreeSet<usize>,
    pods: Vec<Pod>,
    containers: Vec<Container>,
    pulls: Vec<Pull>,
    removes: Vec<Remove>,
    /// Service → its containers.
    by_service: BTreeMap<String, Vec<usize>>,
    /// Service → pods whose gate names it.
    waiters: BTreeMap<String, Vec<usize>>,
    /// Pull → the pods that need it.
    pull_users: Vec<Vec<usize>>,
    pull_index: BTreeMap<(String, String), usize>,
    pod_index: BTreeMap<(String, String), usize>,
    remove_index: BTreeMap<(String, String), usize>,
    /// (host, service, replica) → container.
    container_index: BTreeMap<(String, String, u32), usize>,
    /// Pods per phase, to know when the flow ends without scanning.
    phases: [usize; 5],
    /// Removes issued and not answered.
    removes_open: usize,
    /// Removes to say in the next actions.
    removes_to_say: Vec<usize>,
    /// Conditions evaluated during the current event (they change only between events).
    conds: BTreeMap<(String, Condition), Cond>,
    failures: Vec<Failure>,
    /// Failures and warnings already said, so each is said once.
    said: BTreeSet<String>,
    /// Removes answered `Removed`.
    removed: usize,
    started: bool,
    done: bool,
    /// Service → how many of its pods may be replaced at once (`update_config.parallelism`);
    /// services absent are not limited.
    rolling: BTreeMap<String, usize>,
    /// Services replaced start-first (`update_config.order`).
    start_first: BTreeSet<String>,
    /// Service → the fraction of its replaced replicas whose update may fail before the deploy
    /// fails (`update_config.max_failure_ratio`; `failure_action: continue` tolerates all).
    tolerance: BTreeMap<String, f64>,
    /// Service → its replaced pods whose update failed and was tolerated.
    failed_updates: BTreeMap<String, BTreeSet<usize>>,
    /// Pods given up within the tolerance: they no longer gate the end.
    tolerated: BTreeSet<usize>,
    /// (host, pod) → whether its Retire was answered; issued ones only.
    retires: BTreeMap<(String, String), bool>,
    /// Kept pods whose outgoing generation to retire at the start.
    leftovers: Vec<(String, String)>,
    /// Service → the length of the longest chain of services that wait for it (0: none does).
    /// Pods that become free together are issued longest chain first: a host applies pods one
    /// at a time, and the one on the critical path should not queue behind a leaf.
    chain: BTreeMap<String, usize>,
}

impl Flow {
    /// Prepares the flow of `diff` (computed from `desired`) with the dependency edges of the
    /// project's graph.
    pub fn new(
        desired: &Desired,
        diff: &Diff,
        deps: &[Dependency],
        opts: Options,
    ) -> Result<Flow, FlowError> {
        let mut flow = Flow {
            opts,
            deps: deps.to_vec(),
            ignored: BTreeSet::new(),
            pods: Vec::new(),
            containers: Vec::new(),
            pulls: Vec::new(),
            removes: Vec::new(),
            by_service: BTreeMap::new(),
            waiters: BTreeMap::new(),
            pull_users: Vec::new(),
            pull_index: BTreeMap::new(),
            pod_index: BTreeMap::new(),
            remove_index: BTreeMap::new(),
            container_index: BTreeMap::new(),
            phases: [0; 5],
            removes_open: 0,
            removes_to_say: Vec::new(),
            conds: BTreeMap::new(),
            failures: Vec::new(),
            said: BTreeSet::new(),
            removed: 0,
            started: false,
            done: false,
            rolling: BTreeMap::new(),
            start_first: BTreeSet::new(),
            tolerance: BTreeMap::new(),
            failed_updates: BTreeMap::new(),
            tolerated: BTreeSet::new(),
            retires: BTreeMap::new(),
            leftovers: diff
                .hosts
                .iter()
                .flat_map(|(h, d)| d.retire.iter().map(move |p| (h.clone(), p.clone())))
                .collect(),
            chain: chains(deps),
        };
        for pod in desired.pods() {
            flow.add_pod(pod, diff);
        }
        flow.add_gates();
        flow.check_healthchecks()?;
        flow.mark_restarts();
        flow.add_removes(diff);
        Ok(flow)
    }

    /// Rolling updates: at most `parallelism[service]` pods of a service are replaced at once. A
    /// replaced pod counts until it is ready (every container healthy with a health check,
    /// running without, or exited 0), so the others keep serving meanwhile; the next one goes as
    /// soon as one is ready. Creates and restarts are not limited.
    pub fn set_rolling(&mut self, parallelism: BTreeMap<String, usize>) {
        self.rolling = parallelism
            .into_iter()
            .map(|(s, n)| (s, n.max(1)))
            .collect();
    }

    /// Start-first: replaced pods of these services start their new generation beside the
    /// running one, which is retired ([`Action::Retire`]) once the new one is ready.
    pub fn set_start_first(&mut self, services: BTreeSet<String>) {
        self.start_first = services;
    }

    /// `max_failure_ratio` per service: the fraction (0 to 1) of its replaced replicas whose
    /// update may fail (unhealthy, or exited non-zero, before the deploy ends) and be given up
    /// with a warning; one more fails the deploy, and its `failure_action` applies.
    pub fn set_failure_tolerance(&mut self, ratio: BTreeMap<String, f64>) {
        self.tolerance = ratio;
    }

    /// Whether the executor replaces pod `pod` on `host` start-first: every service of it is.
    pub fn start_first(&self, host: &str, pod: &str) -> bool {
        self.pod_index
            .get(&(host.to_string(), pod.to_string()))
            .is_some_and(|&p| self.is_start_first(p))
    }

    fn is_start_first(&self, p: usize) -> bool {
        self.pods[p].op == Op::Replace
            && !self.start_first.is_empty()
            && self.pods[p].containers.iter().all(|c| {
                self.start_first
                    .contains(&self.containers[*c].replica.service)
            })
    }

    /// Start-first pod `p` just became ready: its outgoing generation goes (unless the deploy
    /// failed: then the old generation is what still serves, and a rollback goes back to it).
    fn maybe_retire(&mut self, p: usize, out: &mut Vec<Action>) {
        if !self.failures.is_empty() || !self.is_start_first(p) || !self.ready(p) {
            return;
        }
        let key = (self.pods[p].host.clone(), self.pods[p].name.clone());
        if self.retires.contains_key(&key) {
            return;
        }
        self.retires.insert(key.clone(), false);
        out.push(Action::Retire {
            host: key.0,
            pod: key.1,
        });
    }

    fn retires_open(&self) -> usize {
        self.retires.values().filter(|done| !**done).count()
    }

    /// Whether pod `p` (issued or up) is ready: it no longer counts against `parallelism`.
    fn ready(&self, p: usize) -> bool {
        self.pods[p].phase == Phase::Up
            && self.pods[p].containers.iter().all(|c| {
                let k = &self.containers[*c];
                k.exit == Some(0)
                    || (k.exit.is_none()
                        && if k.healthchecked {
                            k.healthy
                        } else {
                            k.started
                        })
            })
    }

    /// Whether replacing pod `p` now would exceed a `parallelism` of one of its services.
    fn rolling_full(&self, p: usize) -> bool {
        if self.pods[p].op != Op::Replace || self.rolling.is_empty() {
            return false;
        }
        let services: BTreeSet<&str> = self.pods[p]
            .containers
            .iter()
            .map(|c| self.containers[*c].replica.service.as_str())
            .collect();
        services.iter().any(|s| {
            let Some(&limit) = self.rolling.get(*s) else {
                return false;
            };
            let busy = self
                .by_service
                .get(*s)
                .into_iter()
                .flatten()
                .map(|c| self.containers[*c].pod)
                .collect::<BTreeSet<usize>>()
                .into_iter()
                .filter(|q| {
                    *q != p
                        && self.pods[*q].op == Op::Replace
                        && matches!(self.pods[*q].phase, Phase::Issued | Phase::Up)
                        && !self.ready(*q)
                })
                .count();
            busy >= limit
        })
    }

    /// Pods waiting to be replaced that share a rolled service with container `c`'s pod: they
    /// may go once it is ready.
    fn rolling_peers(&self, c: usize) -> Vec<usize> {
        let service = &self.containers[c].replica.service;
        if !self.rolling.contains_key(service) {
            return Vec::new();
        }
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .map(|k| self.containers[*k].pod)
            .filter(|q| self.pods[*q].phase == Phase::Waiting && self.pods[*q].op == Op::Replace)
            .collect()
    }

    fn add_pod(&mut self, pod: &super::desired::DesiredPod, diff: &Diff) {
        let hd = diff.hosts.get(&pod.host);
        // The diff's lists are sorted by name.
        let has =
            |list: Option<&Vec<String>>| list.is_some_and(|l| l.binary_search(&pod.name).is_ok());
        let op = if has(hd.map(|d| &d.create)) {
            Op::Create
        } else if has(hd.map(|d| &d.replace)) {
            Op::Replace
        } else if has(hd.map(|d| &d.restart)) {
            // Stopped by the user: started again, after its dependencies, as a restart.
            Op::Restart
        } else {
            Op::Keep
        };
        let index = self.pods.len();
        let mut containers = Vec::with_capacity(pod.containers.len());
        for r in &pod.containers {
            let c = self.containers.len();
            self.containers.push(Container {
                pod: index,
                replica: r.clone(),
                healthchecked: pod.healthchecked.contains(&r.service),
                ..Container::default()
            });
            self.by_service
                .entry(r.service.clone())
                .or_default()
                .push(c);
            self.container_index
                .insert((pod.host.clone(), r.service.clone(), r.replica), c);
            containers.push(c);
        }
        let mut pulls = Vec::new();
        if matches!(op, Op::Create | Op::Replace) {
            for image in &pod.images {
                let key = (pod.host.clone(), image.clone());
                let p = match self.pull_index.get(&key) {
                    Some(p) => *p,
                    None => {
                        self.pulls.push(Pull {
                            host: pod.host.clone(),
                            image: image.clone(),
                            state: PullState::Pending,
                        });
                        self.pull_users.push(Vec::new());
                        self.pull_index.insert(key, self.pulls.len() - 1);
                        self.pulls.len() - 1
                    }
                };
                self.pull_users[p].push(index);
                pulls.push(p);
            }
        }
        self.pod_index
            .insert((pod.host.clone(), pod.name.clone()), index);
        let phase = if op == Op::Keep {
            Phase::Kept
        } else {
            Phase::Waiting
        };
        self.phases[phase as usize] += 1;
        self.pods.push(Pod {
            host: pod.host.clone(),
            name: pod.name.clone(),
            op,
            phase,
            containers,
            gate: Vec::new(),
            pulls,
            then_remove: Vec::new(),
        });
    }

    /// Gates: the edges leaving each pod's services for services outside the pod.
    fn add_gates(&mut self) {
        let mut from: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (e, dep) in self.deps.iter().enumerate() {
            from.entry(dep.from.as_str()).or_default().push(e);
        }
        for (i, pod) in self.pods.iter_mut().enumerate() {
            let members: BTreeSet<&str> = pod
                .containers
                .iter()
                .map(|c| self.containers[*c].replica.service.as_str())
                .collect();
            for m in &members {
                for &e in from.get(m).into_iter().flatten() {
                    let dep = &self.deps[e];
                    if members.contains(dep.to.as_str()) {
                        continue;
                    }
                    pod.gate.push(e);
                    let w = self.waiters.entry(dep.to.clone()).or_default();
                    if w.last() != Some(&i) {
                        w.push(i);
                    }
                }
            }
            pod.gate.sort_unstable();
        }
    }

    /// `service_healthy` on a service without a healthcheck can never hold: an error when
    /// required, an ignored edge (with a warning) when optional.
    fn check_healthchecks(&mut self) -> Result<(), FlowError> {
        for (e, dep) in self.deps.iter().enumerate() {
            if dep.condition != Condition::ServiceHealthy {
                continue;
            }
            let unchecked = self
                .by_service
                .get(&dep.to)
                .into_iter()
                .flatten()
                .any(|c| !self.containers[*c].healthchecked);
            if !unchecked {
                continue;
            }
            if dep.required {
                return Err(FlowError::NoHealthcheck {
                    dependent: dep.from.clone(),
                    service: dep.to.clone(),
                });
            }
            self.ignored.insert(e);
        }
        Ok(())
    }

    /// Kept pods with a `restart: true` edge to an updated service restart; a restarted service
    /// counts as updated for its own dependents.
    fn mark_restarts(&mut self) {
        let mut updated: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|p| p.op != Op::Keep)
            .flat_map(|p| &p.containers)
            .map(|c| self.containers[*c].replica.service.clone())
            .collect();
        loop {
            let mut changed = false;
            for dep in self.deps.iter().filter(|d| d.restart) {
                if !updated.contains(&dep.to) || updated.contains(&dep.from) {
                    continue;
                }
                updated.insert(dep.from.clone());
                changed = true;
                for c in self.by_service.get(&dep.from).into_iter().flatten() {
                    let p = &mut self.pods[self.containers[*c].pod];
                    if p.op == Op::Keep {
                        p.op = Op::Restart;
                        p.phase = Phase::Waiting;
                        self.phases[Phase::Kept as usize] -= 1;
                        self.phases[Phase::Waiting as usize] += 1;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Old copies of moved pods wait for the new copy; every other remove goes at once.
    fn add_removes(&mut self, diff: &Diff) {
        for (host, hd) in &diff.hosts {
            for (pod, reason) in &hd.remove {
                let r = self.removes.len();
                let new_copy = match reason {
                    RemoveReason::Moved { to } => self.pod_index.get(&(to.clone(), pod.clone())),
                    _ => None,
                };
                let state = match new_copy {
                    Some(&p) if self.pods[p].phase != Phase::Kept => {
                        self.pods[p].then_remove.push(r);
                        RemoveState::Later
                    }
                    _ => {
                        self.removes_to_say.push(r);
                        self.removes_open += 1;
                        RemoveState::Issued
                    }
                };
                self.remove_index.insert((host.clone(), pod.clone()), r);
                self.removes.push(Remove {
                    host: host.clone(),
                    pod: pod.clone(),
                    reason: reason.clone(),
                    state,
                });
            }
        }
    }

    /// The first actions: every pull, the removes that wait for nothing, and every pod whose
    /// conditions already hold. A deploy with nothing to do returns only [`Action::Done`].
    pub fn start(&mut self) -> Vec<Action> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        let mut out = Vec::new();
        for e in self.ignored.clone() {
            let d = &self.deps[e];
            let message = format!(
                "`{}` waits for `{}` to be healthy, but `{}` has no healthcheck; the dependency is \
                 optional (`required: false`) and is ignored",
                d.from, d.to, d.to
            );
            self.warn(message, &mut out);
        }
        for p in &self.pulls {
            out.push(Action::Pull {
                host: p.host.clone(),
                image: p.image.clone(),
            });
        }
        for (host, pod) in std::mem::take(&mut self.leftovers) {
            self.retires.insert((host.clone(), pod.clone()), false);
            out.push(Action::Retire { host, pod });
        }
        let all: Vec<usize> = (0..self.pods.len()).collect();
        self.advance(all, &mut out);
        out
    }

    /// Takes one event, returns what to do next. Events the flow did not ask for (a pod it did
    /// not start, a pull it did not issue) are ignored, as is everything after `Done`.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.done || !self.started {
            return out;
        }
        self.conds.clear();
        let mut dirty: Vec<usize> = Vec::new();
        match event {
            Event::PullDone { host, image } => {
                if let Some(&p) = self.pull_index.get(&(host, image)) {
                    if self.pulls[p].state == PullState::Pending {
                        self.pulls[p].state = PullState::Done;
                        dirty.extend(&self.pull_users[p]);
                    }
                }
            }
            Event::PullFailed {
                host,
                image,
                reason,
            } => {
                if let Some(&p) = self.pull_index.get(&(host.clone(), image.clone())) {
                    if self.pulls[p].state == PullState::Pending {
                        self.pulls[p].state = PullState::Failed;
                        let failure = Failure {
                            host: Some(host),
                            pod: None,
                            replica: None,
                            kind: FailureKind::PullFailed { image, reason },
                        };
                        self.fail(failure, &mut out);
                    }
                }
            }
            Event::Started(at) => {
                if let Some(c) = self.container(&at) {
                    self.containers[c].started = true;
                    dirty.extend(self.touch(c));
                    self.maybe_retire(self.containers[c].pod, &mut out);
                }
            }
            Event::Healthy(at) => {
                if let Some(c) = self.container(&at) {
                    let k = &mut self.containers[c];
                    k.started = true;
                    k.healthy = true;
                    k.unhealthy = false;
                    dirty.extend(self.touch(c));
                    self.maybe_retire(self.containers[c].pod, &mut out);
                }
            }
            Event::Unhealthy(at) => {
                if let Some(c) = self.container(&at) {
                    let k = &mut self.containers[c];
                    k.started = true;
                    k.healthy = false;
                    k.unhealthy = true;
                    dirty.extend(self.touch(c));
                    self.unwaited(c, &mut out);
                }
            }
            Event::Exited(at, code) => {
                if let Some(c) = self.container(&at) {
                    let k = &mut self.containers[c];
                    k.started = true;
                    k.exit = Some(code);
                    dirty.extend(self.touch(c));
                    self.unwaited(c, &mut out);
                }
            }
            Event::Removed { host, pod } => {
                if let Some(r) = self.open_remove(&host, &pod) {
                    self.close_remove(r);
                    self.removed += 1;
                }
            }
            Event::Retired { host, pod } => {
                if let Some(done) = self.retires.get_mut(&(host, pod)) {
                    *done = true;
                }
            }
            Event::ActionFailed { host, pod, reason } => {
                self.action_failed(host, pod, reason, &mut out)
            }
            Event::HostLost { host, reason } => self.host_lost(&host, reason, &mut out),
            Event::Abort { reason } => {
                let failure = Failure {
                    host: None,
                    pod: None,
                    replica: None,
                    kind: FailureKind::Aborted { reason },
                };
                self.fail(failure, &mut out)
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        self.advance(dirty, &mut out);
        out
    }

    /// Whether `Done` was returned.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Every change this flow will make if nothing fails, by host then pod: what `plan` and
    /// `up --dry-run` print. Empty when there is nothing to do (`plan --detailed-exitcode` 0).
    pub fn plan(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = Vec::new();
        for pod in &self.pods {
            let change = match pod.op {
                Op::Keep => continue,
                Op::Create => Change::Create,
                Op::Replace => Change::Replace,
                Op::Restart => Change::Restart,
            };
            let mut waits_for: Vec<Dependency> = pod
                .gate
                .iter()
                .filter(|e| !self.ignored.contains(e))
                .map(|e| self.deps[*e].clone())
                .collect();
            waits_for.sort_by(|a, b| (&a.to, &a.from).cmp(&(&b.to, &b.from)));
            steps.push(Step {
                host: pod.host.clone(),
                pod: pod.name.clone(),
                change,
                waits_for,
            });
        }
        for (host, pod) in &self.leftovers {
            steps.push(Step {
                host: host.clone(),
                pod: pod.clone(),
                change: Change::Retire,
                waits_for: Vec::new(),
            });
        }
        for r in &self.removes {
            steps.push(Step {
                host: r.host.clone(),
                pod: r.pod.clone(),
                change: Change::Remove(r.reason.clone()),
                waits_for: Vec::new(),
            });
        }
        steps.sort_by(|a, b| (&a.host, &a.pod).cmp(&(&b.host, &b.pod)));
        steps
    }

    fn set_phase(&mut self, p: usize, phase: Phase) {
        self.phases[self.pods[p].phase as usize] -= 1;
        self.phases[phase as usize] += 1;
        self.pods[p].phase = phase;
    }

    fn open_remove(&self, host: &str, pod: &str) -> Option<usize> {
        let r = *self
            .remove_index
            .get(&(host.to_string(), pod.to_string()))?;
        (self.removes[r].state == RemoveState::Issued).then_some(r)
    }

    fn close_remove(&mut self, r: usize) {
        if self.removes[r].state == RemoveState::Issued {
            self.removes_open -= 1;
        }
        self.removes[r].state = RemoveState::Done;
    }

    /// The container `at` names, if the flow started its pod and waits to hear from it.
    fn container(&self, at: &At) -> Option<usize> {
        let key = (at.host.clone(), at.service.clone(), at.replica);
        let c = *self.container_index.get(&key)?;
        matches!(
            self.pods[self.containers[c].pod].phase,
            Phase::Issued | Phase::Up
        )
        .then_some(c)
    }

    /// After news from container `c`: its pod may be up; the pods waiting on its service may go.
    fn touch(&mut self, c: usize) -> Vec<usize> {
        let p = self.containers[c].pod;
        if self.pods[p].phase == Phase::Issued
            && self.pods[p]
                .containers
                .iter()
                .all(|k| self.containers[*k].started)
        {
            self.set_phase(p, Phase::Up);
            // The old copies of a moved pod go once the new one runs, unless the deploy failed
            // meanwhile (then the old copy is what still serves).
            if self.failures.is_empty() {
                for r in self.pods[p].then_remove.clone() {
                    self.removes[r].state = RemoveState::Issued;
                    self.removes_open += 1;
                    self.removes_to_say.push(r);
                }
            }
        }
        let mut next = self
            .waiters
            .get(&self.containers[c].replica.service)
            .cloned()
            .unwrap_or_default();
        next.extend(self.rolling_peers(c));
        next
    }

    /// Container `c` turned unhealthy or exited non-zero. A pod waiting for a condition this
    /// breaks decides in [`Self::advance`] (fatal when required, a warning when optional); if
    /// none waits, it is a warning, or a failure with `--wait`.
    fn unwaited(&mut self, c: usize, out: &mut Vec<Action>) {
        let k = &self.containers[c];
        let kind = match k.exit {
            Some(code) if code != 0 => FailureKind::Exited { code, waiter: None },
            None if k.unhealthy => FailureKind::Unhealthy { waiter: None },
            _ => return,
        };
        let breaks = |cond: Condition| match (&kind, cond) {
            (FailureKind::Exited { .. }, Condition::ServiceStarted) => false,
            (FailureKind::Exited { .. }, _) => true,
            (_, Condition::ServiceHealthy) => true,
            _ => false,
        };
        let waited = self
            .waiters
            .get(&k.replica.service)
            .into_iter()
            .flatten()
            .filter(|w| self.pods[**w].phase == Phase::Waiting)
            .flat_map(|w| &self.pods[*w].gate)
            .map(|e| &self.deps[*e])
            .any(|d| d.to == k.replica.service && breaks(d.condition));
        let failure = self.failure_of(Some(c), kind);
        if self.opts.wait {
            if let Some(why) = self.tolerate(c) {
                self.warn(format!("{failure}; {why}"), out);
                return;
            }
            self.fail(failure, out);
        } else if !waited {
            self.warn(failure.to_string(), out);
        }
    }

    /// Whether the failed update of container `c`'s pod is within its services'
    /// `max_failure_ratio` (a replaced pod only): then the pod is given up (it no longer
    /// gates anything) and the reason is returned; `None` fails the deploy.
    fn tolerate(&mut self, c: usize) -> Option<String> {
        let p = self.containers[c].pod;
        if self.pods[p].op != Op::Replace || self.tolerance.is_empty() {
            return None;
        }
        let services: BTreeSet<String> = self.pods[p]
            .containers
            .iter()
            .map(|k| self.containers[*k].replica.service.clone())
            .collect();
        let mut why = Vec::new();
        for s in &services {
            let ratio = self.tolerance.get(s).copied()?;
            let replaced = self
                .by_service
                .get(s)
                .into_iter()
                .flatten()
                .map(|k| self.containers[*k].pod)
                .filter(|q| self.pods[*q].op == Op::Replace)
                .collect::<BTreeSet<usize>>()
                .len()
                .max(1);
            let mut failed = self.failed_updates.get(s).cloned().unwrap_or_default();
            failed.insert(p);
            if failed.len() as f64 > ratio * replaced as f64 {
                return None;
            }
            why.push(format!(
                "`{s}` tolerates it (`max_failure_ratio: {ratio}`: {} of {replaced} replicas failed)",
                failed.len()
            ));
        }
        for s in services {
            self.failed_updates.entry(s).or_default().insert(p);
        }
        self.tolerated.insert(p);
        if matches!(self.pods[p].phase, Phase::Issued | Phase::Up) {
            self.set_phase(p, Phase::Failed);
        }
        Some(why.join("; "))
    }

    fn action_failed(&mut self, host: String, pod: String, reason: String, out: &mut Vec<Action>) {
        let key = (host.clone(), pod.clone());
        if self.retires.get(&key) == Some(&false) {
            // The new generation runs; the old one still does too, out of the service map: the
            // next `up` retires it.
            self.retires.insert(key, true);
            self.warn(
                format!(
                    "the outgoing generation of pod `{pod}` on `{host}` was not retired                      ({reason}); the next `up` retires it"
                ),
                out,
            );
            return;
        }
        let verb = if let Some(r) = self.open_remove(&host, &pod) {
            self.close_remove(r);
            "removing"
        } else {
            let Some(&p) = self.pod_index.get(&(host.clone(), pod.clone())) else {
                return;
            };
            if !matches!(self.pods[p].phase, Phase::Issued | Phase::Up) {
                return;
            }
            self.set_phase(p, Phase::Failed);
            match self.pods[p].op {
                Op::Create | Op::Keep => "creating",
                Op::Replace => "replacing",
                Op::Restart => "restarting",
            }
        };
        let failure = Failure {
            host: Some(host),
            pod: Some(pod),
            replica: None,
            kind: FailureKind::ActionFailed {
                reason: format!("{verb} failed: {reason}"),
            },
        };
        self.fail(failure, out);
    }

    /// A lost host fails the deploy if this deploy changes anything there: its pods' containers
    /// will not report again. A host with only kept pods is a warning.
    fn host_lost(&mut self, host: &str, reason: String, out: &mut Vec<Action>) {
        let mut work = false;
        for p in 0..self.pods.len() {
            if self.pods[p].host == host && self.pods[p].phase != Phase::Kept {
                work = true;
                if self.pods[p].phase != Phase::Failed {
                    self.set_phase(p, Phase::Failed);
                }
            }
        }
        for r in 0..self.removes.len() {
            if self.removes[r].host == host && self.removes[r].state != RemoveState::Done {
                work = true;
                self.close_remove(r);
            }
        }
        for ((h, _), done) in self.retires.iter_mut() {
            if h == host && !*done {
                work = true;
                *done = true;
            }
        }
        if work {
            let failure = Failure {
                host: Some(host.to_string()),
                pod: None,
                replica: None,
                kind: FailureKind::HostLost { reason },
            };
            self.fail(failure, out);
        } else {
            self.warn(
                format!("host `{host}` lost ({reason}); this deploy changes nothing there"),
                out,
            );
        }
    }

    /// Says the removes that became due, re-evaluates `pods` (sorted): issues those whose gate
    /// opened and whose pulls are done, fails the deploy on a required condition that can never
    /// hold; then checks for the end.
    /// The longest chain waiting for any of the pod's services ([`Flow::chain`]).
    fn chain_of(&self, p: usize) -> usize {
        self.pods[p]
            .containers
            .iter()
            .filter_map(|c| self.chain.get(&self.containers[*c].replica.service))
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn advance(&mut self, mut pods: Vec<usize>, out: &mut Vec<Action>) {
        // Critical path first (stable: otherwise in the order given).
        pods.sort_by_key(|p| std::cmp::Reverse(self.chain_of(*p)));
        for r in std::mem::take(&mut self.removes_to_say) {
            let r = &self.removes[r];
            if r.state == RemoveState::Issued {
                out.push(Action::Remove {
                    host: r.host.clone(),
                    pod: r.pod.clone(),
                    reason: r.reason.clone(),
                });
            }
        }
        for p in pods {
            if self.pods[p].phase != Phase::Waiting || !self.failures.is_empty() {
                continue;
            }
            match self.gate(p, out) {
                Cond::Holds => {}
                Cond::Pending => continue,
                Cond::Never(cause) => {
                    // Without a cause, the dependency's own failure was already said.
                    if let Some((c, kind)) = cause {
                        let failure = self.failure_of(Some(c), kind);
                        self.fail(failure, out);
                    }
                    continue;
                }
            }
            let pulled = self.pods[p]
                .pulls
                .iter()
                .all(|u| self.pulls[*u].state == PullState::Done);
            if !pulled || self.rolling_full(p) {
                continue;
            }
            self.set_phase(p, Phase::Issued);
            let pod = &self.pods[p];
            let (host, name) = (pod.host.clone(), pod.name.clone());
            out.push(match pod.op {
                Op::Create | Op::Keep => Action::Create { host, pod: name },
                Op::Replace => Action::Replace { host, pod: name },
                Op::Restart => Action::Restart { host, pod: name },
            });
            // The new containers report from scratch, a restarted pod's too.
            for c in self.pods[p].containers.clone() {
                let k = &mut self.containers[c];
                k.started = false;
                k.healthy = false;
                k.unhealthy = false;
                k.exit = None;
            }
        }
        self.check_done(out);
    }

    fn failure_of(&self, c: Option<usize>, kind: FailureKind) -> Failure {
        match c {
            Some(c) => {
                let k = &self.containers[c];
                let pod = &self.pods[k.pod];
                Failure {
                    host: Some(pod.host.clone()),
                    pod: Some(pod.name.clone()),
                    replica: Some(k.replica.clone()),
                    kind,
                }
            }
            None => Failure {
                host: None,
                pod: None,
                replica: None,
                kind,
            },
        }
    }

    /// Whether pod `p` may start: every edge of its gate holds, or can never hold and is optional.
    fn gate(&mut self, p: usize, out: &mut Vec<Action>) -> Cond {
        let mut pending = false;
        for e in self.pods[p].gate.clone() {
            if self.ignored.contains(&e) {
                continue;
            }
            let (to, condition, required, from) = {
                let d = &self.deps[e];
                (d.to.clone(), d.condition, d.required, d.from.clone())
            };
            match self.condition(&to, condition) {
                Cond::Holds => {}
                Cond::Pending => pending = true,
                Cond::Never(cause) => {
                    let waiter = Some((from.clone(), condition));
                    let cause = cause.map(|(c, kind)| {
                        let kind = match kind {
                            FailureKind::Exited { code, .. } => {
                                FailureKind::Exited { code, waiter }
                            }
                            FailureKind::Unhealthy { .. } => FailureKind::Unhealthy { waiter },
                            other => other,
                        };
                        (c, kind)
                    });
                    if required {
                        return Cond::Never(cause);
                    }
                    let why = match cause {
                        Some((c, FailureKind::Exited { code, .. })) => {
                            format!("{} exited with code {code}", self.at(c))
                        }
                        Some((c, _)) => format!("{} is unhealthy", self.at(c)),
                        None => "it failed".to_string(),
                    };
                    let message = format!(
                        "`{from}` starts without `{to}` ({}, `required: false`): {why}",
                        condition_str(condition)
                    );
                    self.warn(message, out);
                }
            }
        }
        if pending {
            Cond::Pending
        } else {
            Cond::Holds
        }
    }

    fn at(&self, c: usize) -> At {
        let k = &self.containers[c];
        At {
            host: self.pods[k.pod].host.clone(),
            service: k.replica.service.clone(),
            replica: k.replica.replica,
        }
    }

    /// Whether `condition` holds for every replica of `service` (memoized for the event).
    fn condition(&mut self, service: &str, condition: Condition) -> Cond {
        let key = (service.to_string(), condition);
        if let Some(c) = self.conds.get(&key) {
            return c.clone();
        }
        let cond = self.evaluate(service, condition);
        self.conds.insert(key, cond.clone());
        cond
    }

    fn evaluate(&self, service: &str, condition: Condition) -> Cond {
        let mut pending = false;
        for &c in self.by_service.get(service).into_iter().flatten() {
            let k = &self.containers[c];
            match self.pods[k.pod].phase {
                Phase::Kept => continue,
                Phase::Failed => return Cond::Never(None),
                Phase::Waiting => {
                    pending = true;
                    continue;
                }
                Phase::Issued | Phase::Up => {}
            }
            let never = |kind| Cond::Never(Some((c, kind)));
            let state = match condition {
                Condition::ServiceStarted if k.started => Cond::Holds,
                Condition::ServiceStarted => Cond::Pending,
                Condition::ServiceHealthy => match k.exit {
                    _ if k.healthy => Cond::Holds,
                    Some(code) => never(FailureKind::Exited { code, waiter: None }),
                    None if k.unhealthy => never(FailureKind::Unhealthy { waiter: None }),
                    None => Cond::Pending,
                },
                Condition::ServiceCompletedSuccessfully => match k.exit {
                    Some(0) => Cond::Holds,
                    Some(code) => never(FailureKind::Exited { code, waiter: None }),
                    None => Cond::Pending,
                },
            };
            match state {
                Cond::Holds => {}
                Cond::Pending => pending = true,
                never => return never,
            }
        }
        if pending {
            Cond::Pending
        } else {
            Cond::Holds
        }
    }

    fn warn(&mut self, message: String, out: &mut Vec<Action>) {
        if self.said.insert(format!("warn {message}")) {
            out.push(Action::Warn(message));
        }
    }

    fn fail(&mut self, failure: Failure, out: &mut Vec<Action>) {
        if self.said.insert(format!("fail {failure}")) {
            self.failures.push(failure.clone());
            out.push(Action::Fail(failure));
        }
    }

    /// Ends the flow when nothing more can happen: on success, every pod up and every remove
    /// answered (and with `wait`, every container settled); after a failure, once nothing is in
    /// flight.
    fn check_done(&mut self, out: &mut Vec<Action>) {
        if self.done
            || self.phases[Phase::Issued as usize] > 0
            || self.removes_open > 0
            || self.retires_open() > 0
        {
            return;
        }
        if self.failures.is_empty() {
            // No pod waits and none is in flight: all are up, so every old copy of a moved pod
            // was removed too.
            let all_up = self.phases[Phase::Waiting as usize] == 0;
            if !all_up || (self.opts.wait && !self.settled()) {
                return;
            }
        }
        self.done = true;
        let count = |op: Op| {
            self.pods
                .iter()
                .filter(|p| p.op == op && p.phase == Phase::Up)
                .count()
        };
        out.push(Action::Done(Summary {
            created: count(Op::Create),
            replaced: count(Op::Replace),
            restarted: count(Op::Restart),
            removed: self.removed,
            retired: self.retires.values().filter(|done| **done).count(),
            kept: self.pods.iter().filter(|p| p.op == Op::Keep).count(),
            failures: self.failures.clone(),
            incomplete: self
                .pods
                .iter()
                .filter(|p| matches!(p.phase, Phase::Waiting | Phase::Failed))
                .map(|p| (p.host.clone(), p.name.clone()))
                .collect(),
        }));
    }

    /// `--wait`: every container this run started is healthy (with a healthcheck), running
    /// (without), or exited 0.
    fn settled(&self) -> bool {
        self.containers.iter().all(|k| {
            self.pods[k.pod].phase == Phase::Kept
                || self.tolerated.contains(&k.pod)
                || k.exit == Some(0)
                || (k.exit.is_none()
                    && if k.healthchecked {
                        k.healthy
                    } else {
                        k.started
                    })
        })
    }
}

#[cfg(test)]
mod tests {
    //! Rolling updates (`Flow::set_rolling`): replaced pods of a service go `parallelism` at a
    //! time, each next one once one is ready; and pods freed together go critical path first.

    use super::*;
    use crate::deploy::desired::{self, PodInput};
    use crate::deploy::diff::{self, ObservedPod};
    use crate::proto::{ContainerSpec, Healthcheck, PodSpec};

    /// `web` with `replicas` replicas on hosts h1..hN (health-checked when `health`), all running
    /// with another spec, and `db` (one replica, unchanged) on h1.
    fn rolling(replicas: u32, health: bool, parallelism: usize) -> Flow {
        let pod = |service: &str, n: u32, env: &str| PodInput {
            host: format!("h{n}"),
            spec: PodSpec {
                name: format!("{service}-{n}"),
                hostname: format!("{service}-{n}"),
                spec_hash: String::new(),
                containers: vec![ContainerSpec {
                    service: service.into(),
                    replica: n,
                    image: "img".into(),
                    env: [("V".to_string(), env.to_string())].into(),
                    healthcheck: health.then(|| Healthcheck {
                        test: vec!["CMD".into(), "ok".into()],
                        interval_ms: 1000,
                        timeout_ms: 1000,
                        retries: 3,
                        start_period_ms: 0,
                        start_interval_ms: 0,
                    }),
                    ..ContainerSpec::default()
                }],
                ports: Vec::new(),
                network: Default::default(),
            },
            networks: vec!["default".into()],
        };
        let mut inputs: Vec<PodInput> = (1..=replicas).map(|n| pod("web", n, "new")).collect();
        inputs.push(pod("db", 1, "same"));
        let services: BTreeSet<String> = ["web".to_string(), "db".to_string()].into();
        let desired =
            desired::build(inputs, &BTreeMap::new(), services.clone(), services).expect("desired");
        let mut observed = diff::Observed::new();
        for p in desired.pods() {
            let same = p.name.starts_with("db");
            observed
                .entry(p.host.clone())
                .or_default()
                .push(ObservedPod {
                    name: p.name.clone(),
                    spec_hash: if same {
                        p.spec_hash.clone()
                    } else {
                        "old".into()
                    },
                    services: p.containers.iter().map(|c| c.service.clone()).collect(),
                    stopped: false,
                    outgoing: false,
                });
        }
        let d = diff::diff(&desired, &observed, false);
        let mut flow = Flow::new(&desired, &d, &[], Options { wait: true }).expect("flow");
        flow.set_rolling([("web".to_string(), parallelism)].into());
        flow
    }

    fn replaced(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Replace { pod, .. } => Some(pod.clone()),
                _ => None,
            })
            .collect()
    }

    fn at(n: u32) -> At {
        At {
            host: format!("h{n}"),
            service: "web".into(),
            replica: n,
        }
    }

    fn pulled(flow: &mut Flow, replicas: u32) -> Vec<Action> {
        (1..=replicas)
            .flat_map(|n| {
                flow.on(Event::PullDone {
                    host: format!("h{n}"),
                    image: "img".into(),
                })
            })
            .collect()
    }

    /// Services on host h1, created from nothing, each with a health check; `deps` as
    /// (from, to) `service_healthy` edges.
    fn created(services: &[&str], deps: &[(&str, &str)]) -> Flow {
        let inputs: Vec<PodInput> = services
            .iter()
            .map(|service| PodInput {
                host: "h1".into(),
                spec: PodSpec {
                    name: format!("{service}-1"),
                    hostname: format!("{service}-1"),
                    spec_hash: String::new(),
                    containers: vec![ContainerSpec {
                        service: service.to_string(),
                        replica: 1,
                        image: "img".into(),
                        healthcheck: Some(Healthcheck {
                            test: vec!["CMD".into(), "ok".into()],
                            interval_ms: 100,
                            timeout_ms: 1000,
                            retries: 3,
                            start_period_ms: 0,
                            start_interval_ms: 0,
                        }),
                        ..ContainerSpec::default()
                    }],
                    ports: Vec::new(),
                    network: Default::default(),
                },
                networks: vec!["default".into()],
            })
            .collect();
        let names: BTreeSet<String> = services.iter().map(|s| s.to_string()).collect();
        let desired =
            desired::build(inputs, &BTreeMap::new(), names.clone(), names).expect("desired");
        let d = diff::diff(&desired, &diff::Observed::new(), false);
        let deps: Vec<Dependency> = deps
            .iter()
            .map(|(from, to)| Dependency {
                from: from.to_string(),
                to: to.to_string(),
                condition: Condition::ServiceHealthy,
                required: true,
                restart: false,
            })
            .collect();
        Flow::new(&desired, &d, &deps, Options::default()).expect("flow")
    }

    fn created_pods(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { pod, .. } => Some(pod.clone()),
                _ => None,
            })
            .collect()
    }

    /// Pods freed by the same event go longest waiting chain first: the agent applies one pod at
    /// a time, and `queue` (which `web` waits for) must not queue behind the leaf `audit` (found
    /// as `api` starting after `worker` in the `up` benchmark's timeline).
    #[test]
    fn pods_freed_together_go_critical_path_first() {
        let mut flow = created(
            &["db", "audit", "queue", "web", "zeta"],
            &[
                ("audit", "db"),
                ("queue", "db"),
                ("web", "queue"),
                ("zeta", "db"),
            ],
        );
        flow.start();
        let first = flow.on(Event::PullDone {
            host: "h1".into(),
            image: "img".into(),
        });
        assert_eq!(created_pods(&first), ["db-1"]);
        let at = |service: &str| At {
            host: "h1".into(),
            service: service.into(),
            replica: 1,
        };
        flow.on(Event::Started(at("db")));
        let freed = flow.on(Event::Healthy(at("db")));
        assert_eq!(created_pods(&freed), ["queue-1", "audit-1", "zeta-1"]);
        assert_eq!(chains(&flow.deps).get("db"), Some(&2));
        assert_eq!(chains(&flow.deps).get("web").copied().unwrap_or(0), 0);
    }

    #[test]
    fn one_replica_at_a_time_each_after_the_last_is_healthy() {
        let mut flow = rolling(3, true, 1);
        flow.start();
        assert_eq!(replaced(&pulled(&mut flow, 3)), ["web-1"]);
        // Started is not ready: a health check must pass first.
        assert!(replaced(&flow.on(Event::Started(at(1)))).is_empty());
        assert_eq!(replaced(&flow.on(Event::Healthy(at(1)))), ["web-2"]);
        assert!(replaced(&flow.on(Event::Started(at(2)))).is_empty());
        assert_eq!(replaced(&flow.on(Event::Healthy(at(2)))), ["web-3"]);
        flow.on(Event::Started(at(3)));
        let end = flow.on(Event::Healthy(at(3)));
        assert!(
            matches!(end.last(), Some(Action::Done(s)) if s.ok() && s.replaced == 3),
            "{end:?}"
        );
    }

    #[test]
    fn parallelism_two_keeps_two_in_flight_and_the_db_is_kept() {
        let mut flow = rolling(5, false, 2);
        flow.start();
        assert_eq!(replaced(&pulled(&mut flow, 5)), ["web-1", "web-2"]);
        // Without a health check, started is ready.
        assert_eq!(replaced(&flow.on(Event::Started(at(2)))), ["web-3"]);
        assert!(
            replaced(&flow.on(Event::Started(at(2)))).is_empty(),
            "said once"
        );
        assert_eq!(replaced(&flow.on(Event::Started(at(1)))), ["web-4"]);
        assert_eq!(replaced(&flow.on(Event::Started(at(4)))), ["web-5"]);
        flow.on(Event::Started(at(3)));
        let end = flow.on(Event::Started(at(5)));
        assert!(
            matches!(end.last(), Some(Action::Done(s)) if s.ok() && s.replaced == 5 && s.kept == 1),
            "{end:?}"
        );
    }

    #[test]
    fn a_replica_that_fails_its_health_check_stops_the_rollout_there() {
        let mut flow = rolling(3, true, 1);
        flow.start();
        assert_eq!(replaced(&pulled(&mut flow, 3)), ["web-1"]);
        flow.on(Event::Started(at(1)));
        let out = flow.on(Event::Unhealthy(at(1)));
        assert!(replaced(&out).is_empty(), "no further replica: {out:?}");
        let Some(Action::Done(s)) = out.last() else {
            panic!("ends: {out:?}")
        };
        assert!(!s.ok());
        // web-2 and web-3 were never touched: they still run the old version.
        let untouched: Vec<&str> = s.incomplete.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(untouched, ["web-2", "web-3"]);
    }

    fn retired(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Retire { pod, .. } => Some(pod.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn start_first_retires_each_old_generation_once_its_replacement_is_healthy() {
        let mut flow = rolling(2, true, 1);
        flow.set_start_first(["web".to_string()].into());
        assert!(flow.start_first("h1", "web-1") && !flow.start_first("h1", "db-1"));
        flow.start();
        assert_eq!(replaced(&pulled(&mut flow, 2)), ["web-1"]);
        // Started is not ready: the old generation stays until the health check passes.
        assert!(retired(&flow.on(Event::Started(at(1)))).is_empty());
        let out = flow.on(Event::Healthy(at(1)));
        assert_eq!(
            (retired(&out), replaced(&out)),
            (vec!["web-1".into()], vec!["web-2".into()])
        );
        flow.on(Event::Started(at(2)));
        let out = flow.on(Event::Healthy(at(2)));
        assert_eq!(retired(&out), ["web-2"]);
        assert!(
            !out.iter().any(|a| matches!(a, Action::Done(_))),
            "not done while an old generation runs: {out:?}"
        );
        flow.on(Event::Retired {
            host: "h1".into(),
            pod: "web-1".into(),
        });
        let end = flow.on(Event::Retired {
            host: "h2".into(),
            pod: "web-2".into(),
        });
        assert!(
            matches!(end.last(), Some(Action::Done(s)) if s.ok() && s.retired == 2),
            "{end:?}"
        );
    }

    #[test]
    fn a_failed_start_first_replica_keeps_its_old_generation() {
        let mut flow = rolling(2, true, 1);
        flow.set_start_first(["web".to_string()].into());
        flow.start();
        pulled(&mut flow, 2);
        flow.on(Event::Started(at(1)));
        let out = flow.on(Event::Unhealthy(at(1)));
        assert!(
            retired(&out).is_empty(),
            "the old one still serves: {out:?}"
        );
        assert!(
            matches!(out.last(), Some(Action::Done(s)) if !s.ok()),
            "{out:?}"
        );
    }

    #[test]
    fn max_failure_ratio_tolerates_that_fraction_of_failed_replicas_and_no_more() {
        // 4 replicas, ratio 0.25: one failure is tolerated, the second fails the deploy.
        let mut flow = rolling(4, true, 1);
        flow.set_failure_tolerance([("web".to_string(), 0.25)].into());
        flow.start();
        assert_eq!(replaced(&pulled(&mut flow, 4)), ["web-1"]);
        flow.on(Event::Started(at(1)));
        let out = flow.on(Event::Unhealthy(at(1)));
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Warn(w) if w.contains("max_failure_ratio: 0.25"))),
            "{out:?}"
        );
        assert_eq!(replaced(&out), ["web-2"], "the rollout goes on");
        flow.on(Event::Started(at(2)));
        let out = flow.on(Event::Exited(at(2), 3));
        assert!(replaced(&out).is_empty(), "{out:?}");
        let Some(Action::Done(s)) = out.last() else {
            panic!("ends: {out:?}")
        };
        assert_eq!(s.failures.len(), 1, "{s:?}");
        assert!(s.failures[0].to_string().contains("exited with code 3"));
    }

    #[test]
    fn failure_action_continue_tolerates_every_failure() {
        let mut flow = rolling(2, true, 1);
        flow.set_failure_tolerance([("web".to_string(), 1.0)].into());
        flow.start();
        pulled(&mut flow, 2);
        flow.on(Event::Started(at(1)));
        assert_eq!(replaced(&flow.on(Event::Unhealthy(at(1)))), ["web-2"]);
        flow.on(Event::Started(at(2)));
        let end = flow.on(Event::Unhealthy(at(2)));
        assert!(
            matches!(end.last(), Some(Action::Done(s)) if s.ok() && s.incomplete.len() == 2),
            "{end:?}"
        );
    }

    #[test]
    fn without_rolling_every_replica_goes_at_once() {
        let mut flow = rolling(3, true, 1);
        flow.set_rolling(BTreeMap::new());
        flow.start();
        assert_eq!(replaced(&pulled(&mut flow, 3)), ["web-1", "web-2", "web-3"]);
    }
}
