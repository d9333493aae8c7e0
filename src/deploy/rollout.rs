//! The releases' thin shell: reads and writes the release records on the hosts, and carries out
//! a rollback (or any re-application of recorded pods) batch by batch, as [`super::release`]
//! decided, waiting for each batch to be ready before the next. It never prints: what happens
//! goes to the caller as [`Note`]s.
//!
//! Also the rolling update's order as `up` carries it out ([`configure`], [`retire`]):
//!
//! ```text
//!  CLI                                   agent of the replica's host        every agent
//!   │ ApplyPods{pods:[web-1'], start_first:[web-1]}
//!   │ ───────────────────────────────────▶ │ web-1' starts beside web-1 (own netns, address,
//!   │                                      │ cgroups: instance `web-1.b`); web-1 still serves
//!   │ Status … web-1' healthy (or running) │
//!   │ Services (map without web-1) ─────────────────────────────────────────▶ │ VIPs, DNS
//!   │ ApplyPods{retire:[web-1]} ─────────▶ │ web-1 leaves the local sets, gets its
//!   │                                      │ stop_signal, stop_grace_period, is removed
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::exec::HostConn;
use super::release::{self, Move, Policy, Readiness};
use crate::proto::{
    ApplyPodsRequest, HostNetwork, PodSpec, RecordRelease, ReleaseRecord, Request, Response,
};

/// What a rollout tells its caller as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A batch of one service's moves starts (its number from 1, of `of`).
    Batch {
        service: String,
        number: usize,
        of: usize,
        moves: Vec<String>,
    },
    /// A pod of the batch is ready.
    Ready {
        host: String,
        pod: String,
    },
    Warning(String),
}

/// Every connected host's records of `project`, newest first (with their pods when `pods`), and
/// the hosts that could not say.
pub async fn fetch(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    pods: bool,
    timeout: Duration,
) -> (
    BTreeMap<String, Vec<ReleaseRecord>>,
    BTreeMap<String, String>,
) {
    let mut tasks = JoinSet::new();
    for (name, conn) in hosts {
        let (name, conn, project) = (name.clone(), conn.clone(), project.to_string());
        tasks.spawn(async move {
            let r = conn
                .call(Request::Releases { project, pods }, timeout)
                .await;
            (name, r)
        });
    }
    let mut ok = BTreeMap::new();
    let mut failed = BTreeMap::new();
    while let Some(Ok((name, r))) = tasks.join_next().await {
        match r {
            Ok(Response::Releases { releases }) => {
                ok.insert(name, releases);
            }
            Ok(other) => {
                failed.insert(name, format!("unexpected reply to Releases: {other:?}"));
            }
            Err(e) => {
                failed.insert(name, e.reason());
            }
        }
    }
    (ok, failed)
}

/// Writes each host's record (in parallel), pruning to `keep`. Returns the hosts that could not
/// record it, with why.
pub async fn record(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    records: BTreeMap<String, ReleaseRecord>,
    keep: u32,
    fences: &BTreeMap<String, u64>,
    timeout: Duration,
) -> BTreeMap<String, String> {
    let mut tasks = JoinSet::new();
    for (name, record) in records {
        let Some(conn) = hosts.get(&name).cloned() else {
            continue;
        };
        let fence = fences.get(&name).copied();
        tasks.spawn(async move {
            let r = conn
                .call(
                    Request::RecordRelease(RecordRelease {
                        record,
                        keep,
                        fence,
                    }),
                    timeout,
                )
                .await;
            (name, r)
        });
    }
    let mut failed = BTreeMap::new();
    while let Some(Ok((name, r))) = tasks.join_next().await {
        match r {
            Ok(Response::Releases { .. }) => {}
            Ok(other) => {
                failed.insert(
                    name,
                    format!("unexpected reply to RecordRelease: {other:?}"),
                );
            }
            Err(e) => {
                failed.insert(name, e.reason());
            }
        }
    }
    failed
}

/// The same status change on every host's record.
pub fn with_status(
    records: &BTreeMap<String, ReleaseRecord>,
    status: crate::proto::ReleaseStatus,
    message: Option<String>,
) -> BTreeMap<String, ReleaseRecord> {
    records
        .iter()
        .map(|(h, r)| {
            let mut r = r.clone();
            r.status = status;
            r.message = message.clone();
            (h.clone(), r)
        })
        .collect()
}

/// How a rollout reaches the hosts.
pub struct Target<'a> {
    pub hosts: &'a BTreeMap<String, Arc<HostConn>>,
    pub networks: &'a BTreeMap<String, HostNetwork>,
    pub project: &'a str,
    pub fences: &'a BTreeMap<String, u64>,
    pub registry_auth: &'a BTreeMap<String, crate::proto::RegistryAuth>,
    pub insecure: &'a [String],
    /// One `ApplyPods` (it may pull) may take this long.
    pub request_timeout: Duration,
    /// A batch may take this long to get ready (beyond its policy's monitor).
    pub ready_timeout: Duration,
    pub poll: Duration,
}

/// Tells the flow how `up` rolls each managed service: start-first unless its policy says
/// stop-first or a published host port forbids it, and its `max_failure_ratio` (all failures
/// tolerated with `failure_action: continue`). Returns what to tell the user: the services that
/// this run replaces stop-first because of a host port.
pub fn configure(
    flow: &mut super::flow::Flow,
    project: &crate::compose::model::Project,
    managed: &BTreeSet<String>,
    desired: &super::desired::Desired,
    diff: &super::diff::Diff,
) -> Vec<String> {
    let mut start_first = BTreeSet::new();
    let mut tolerance = BTreeMap::new();
    for s in managed {
        let p = release::policy(project, s, false);
        if p.start_first {
            start_first.insert(s.clone());
        }
        let ratio = match p.failure_action {
            release::FailureAction::Continue => 1.0,
            _ => p.max_failure_ratio,
        };
        tolerance.insert(s.clone(), ratio);
    }
    flow.set_start_first(start_first.clone());
    flow.set_failure_tolerance(tolerance);
    let replaced: BTreeSet<&str> = diff
        .hosts
        .iter()
        .flat_map(|(h, d)| d.replace.iter().filter_map(move |p| desired.pod(h, p)))
        .flat_map(|p| p.containers.iter().map(|c| c.service.as_str()))
        .collect();
    replaced
        .into_iter()
        .filter(|s| !start_first.contains(*s))
        .filter_map(|s| {
            let svc = project.services.get(s)?;
            let port = svc.ports.iter().find_map(|p| p.published.clone())?;
            Some(format!(
                "`{s}` is replaced stop-first: it publishes host port {port}, which two                  generations of a replica cannot bind at once (each replica stops before its                  replacement starts; put a front service before it to roll it start-first)"
            ))
        })
        .collect()
}

/// How long an old generation keeps answering after every host's map has left it out, before it
/// is stopped: requests that reached it just before the switch finish (found as 1 failed request
/// in ~300 when it was stopped at once).
pub const DRAIN: Duration = Duration::from_secs(1);

/// Makes `req` (an `ApplyPods` of pod `pod`) replace it start-first.
pub fn ask_start_first(req: &mut Request, pod: &str) {
    if let Request::ApplyPods(r) = req {
        r.start_first = vec![pod.to_string()];
    }
}

/// Makes `req` (an `ApplyPods`) retire the outgoing generation of pod `pod`.
pub fn ask_retire(req: &mut Request, pod: &str) {
    if let Request::ApplyPods(r) = req {
        r.retire = vec![pod.to_string()];
    }
}

/// Retires the outgoing generation of `pod` on `conn`'s host: first the service map, rebuilt
/// from every host's status (it leaves an outgoing generation out once the new one serves), goes
/// to every host, so that no host still sends it connections, and requests under way end
/// ([`DRAIN`]); then `req` (an `ApplyPods` with
/// `retire`) takes it out of the local sets and stops it with its `stop_signal` and
/// `stop_grace_period`. Answers [`Event::Retired`](super::flow::Event::Retired), or why not.
pub async fn retire(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    conn: &HostConn,
    project: Option<Arc<crate::compose::model::Project>>,
    req: Request,
    host: String,
    pod: String,
    timeout: Duration,
) -> super::flow::Event {
    if let Some(project) = project {
        // A host that did not take the map keeps its last one: the push at the end of `up`
        // says so.
        let _ = super::services::publish(hosts, &project, &BTreeMap::new(), timeout).await;
        tokio::time::sleep(DRAIN).await;
    }
    match conn.call(req, timeout).await {
        Ok(Response::Applied(_)) => super::flow::Event::Retired { host, pod },
        Ok(other) => super::flow::Event::ActionFailed {
            host,
            pod,
            reason: format!("unexpected reply to a retire: {other:?}"),
        },
        Err(e) => super::exec::lost_or_failed(host, pod, e),
    }
}

/// Carries out `batches` in order. Each batch: its moves sent (start-first: new pods, then the
/// removals; stop-first the other way, as [`release::batches`] ordered them), then every pod it
/// applied watched until it is ready and has stayed so for its policy's `monitor`, then the
/// policy's `delay`. The first pod that fails ends the rollout: `Err` says which, where and why
/// (a rollout that fails is never undone by another). A pod replaced start-first (its service's
/// policy) gets its new generation beside the one running, which is retired once the new one is
/// ready; one whose previous generation still runs beside it goes back to it at once.
pub async fn carry_out(
    target: &Target<'_>,
    batches: &[(String, Vec<Move>)],
    policies: &BTreeMap<String, Policy>,
    project: &crate::compose::model::Project,
    note: &mut dyn FnMut(Note),
) -> Result<(), String> {
    for (i, (service, moves)) in batches.iter().enumerate() {
        note(Note::Batch {
            service: service.clone(),
            number: i + 1,
            of: batches.len(),
            moves: moves
                .iter()
                .map(|m| match m {
                    Move::Apply { host, pod } => format!("{}@{host}", pod.name),
                    Move::Remove { host, pod } => format!("-{pod}@{host}"),
                })
                .collect(),
        });
        let policy = policies.get(service);
        let started = Instant::now();
        // Consecutive moves of one kind go together (one request per host each).
        let mut applied: Vec<(String, PodSpec)> = Vec::new();
        let mut k = 0;
        while k < moves.len() {
            let apply = matches!(moves[k], Move::Apply { .. });
            let mut run: Vec<&Move> = Vec::new();
            while k < moves.len() && matches!(moves[k], Move::Apply { .. }) == apply {
                run.push(&moves[k]);
                k += 1;
            }
            let start_first = policy.is_none_or(|p| p.start_first);
            send(target, &run, start_first, false).await?;
            if apply {
                let pods: Vec<(String, PodSpec)> = run
                    .iter()
                    .filter_map(|m| match m {
                        Move::Apply { host, pod } => Some((host.clone(), pod.clone())),
                        Move::Remove { .. } => None,
                    })
                    .collect();
                // Start-first: the new pods are ready before the old copies go.
                wait_ready(target, &pods, policy, note).await?;
                if start_first {
                    // Every host's map leaves the old generations out before they stop.
                    let _ = super::services::publish(
                        target.hosts,
                        project,
                        &BTreeMap::new(),
                        target.request_timeout,
                    )
                    .await;
                    tokio::time::sleep(DRAIN).await;
                    send(target, &run, false, true).await?;
                }
                applied.extend(pods);
            }
        }
        // Monitor: what turned ready must stay so for the monitor window.
        if let Some(p) = policy {
            let left = p.monitor.saturating_sub(started.elapsed());
            if !left.is_zero() && !applied.is_empty() {
                watch(target, &applied, left).await?;
            }
            if !p.delay.is_zero() && i + 1 < batches.len() {
                tokio::time::sleep(p.delay).await;
            }
        }
    }
    Ok(())
}

/// One `ApplyPods` per host for these moves, in parallel: the applies replaced start-first
/// with `start_first`; with `retire`, only the retirement of the applied pods' outgoing
/// generations (an agent with none to retire does nothing).
async fn send(
    target: &Target<'_>,
    moves: &[&Move],
    start_first: bool,
    retire: bool,
) -> Result<(), String> {
    let mut per_host: BTreeMap<&str, (Vec<PodSpec>, Vec<String>)> = BTreeMap::new();
    for m in moves {
        let e = per_host.entry(m.host()).or_default();
        match m {
            Move::Apply { pod, .. } => e.0.push(pod.clone()),
            Move::Remove { pod, .. } => e.1.push(pod.clone()),
        }
    }
    let mut tasks = JoinSet::new();
    for (host, (pods, remove)) in per_host {
        let Some(conn) = target.hosts.get(host).cloned() else {
            return Err(format!("host `{host}` is not connected"));
        };
        let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        if retire && names.is_empty() {
            continue;
        }
        let req = Request::ApplyPods(ApplyPodsRequest {
            project: target.project.to_string(),
            network: target.networks.get(host).cloned(),
            pods: if retire { Vec::new() } else { pods },
            remove: if retire { Vec::new() } else { remove },
            registry_auth: target.registry_auth.clone(),
            insecure_registries: target.insecure.to_vec(),
            fence: target.fences.get(host).copied(),
            start_first: if start_first && !retire {
                names.clone()
            } else {
                Vec::new()
            },
            retire: if retire { names } else { Vec::new() },
        });
        let timeout = target.request_timeout;
        tasks.spawn(async move { conn.call(req, timeout).await });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(format!("bug: a request task failed: {e}")),
        }
    }
    Ok(())
}

/// Statuses of the project on these hosts, in parallel; a host that does not answer is an error.
async fn statuses(
    target: &Target<'_>,
    hosts: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<crate::proto::PodStatus>>, String> {
    let mut tasks = JoinSet::new();
    for host in hosts {
        let Some(conn) = target.hosts.get(host).cloned() else {
            return Err(format!("host `{host}` is not connected"));
        };
        let (host, project, timeout) = (
            host.clone(),
            target.project.to_string(),
            target.request_timeout,
        );
        tasks.spawn(async move { (host, conn.status(&project, timeout).await) });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (host, r) = joined.map_err(|e| format!("bug: a status task failed: {e}"))?;
        out.insert(host, r.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

async fn wait_ready(
    target: &Target<'_>,
    pods: &[(String, PodSpec)],
    policy: Option<&Policy>,
    note: &mut dyn FnMut(Note),
) -> Result<(), String> {
    let limit = target.ready_timeout + policy.map(|p| p.monitor).unwrap_or_default();
    let deadline = Instant::now() + limit;
    let hosts: BTreeSet<String> = pods.iter().map(|(h, _)| h.clone()).collect();
    let mut waiting: Vec<&(String, PodSpec)> = pods.iter().collect();
    loop {
        let now = statuses(target, &hosts).await?;
        let mut still = Vec::new();
        for item in waiting {
            let (host, pod) = item;
            let running = now.get(host).map(Vec::as_slice).unwrap_or_default();
            match release::readiness(running, &pod.name, &pod.spec_hash) {
                Readiness::Ready => note(Note::Ready {
                    host: host.clone(),
                    pod: pod.name.clone(),
                }),
                Readiness::Pending => still.push(item),
                Readiness::Failed { container, reason } => {
                    let message =
                        format!("`{container}` of pod `{}` on `{host}`: {reason}", pod.name);
                    return Err(with_logs(target, host, &container, message).await);
                }
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = still
                .iter()
                .map(|(h, p)| format!("`{}` on `{h}`", p.name))
                .collect();
            return Err(format!(
                "{} did not get ready within {}s",
                names.join(", "),
                limit.as_secs()
            ));
        }
        waiting = still;
        tokio::time::sleep(target.poll).await;
    }
}

/// `message` followed by the last lines the container (`service.replica`) on `host` wrote.
async fn with_logs(target: &Target<'_>, host: &str, container: &str, message: String) -> String {
    let (Some(conn), Some((service, replica))) = (
        target.hosts.get(host),
        container
            .rsplit_once('.')
            .and_then(|(s, r)| Some((s.to_string(), r.parse::<u32>().ok()?))),
    ) else {
        return message;
    };
    let at = super::flow::At {
        host: host.to_string(),
        service,
        replica,
    };
    let lines = super::exec::last_logs(conn, target.project, &at, target.request_timeout).await;
    if lines.is_empty() {
        return message;
    }
    format!(
        "{message}\n  last log lines of {at}:\n{}",
        lines
            .iter()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Watches ready pods for `window`: any that stops being ready fails the rollout. `up` runs it
/// over the pods a release changed, for what is left of their services' `monitor`, so a replica
/// that turns unhealthy (or crashes) soon after it passed fails the release, which is then
/// rolled back.
pub async fn watch(
    target: &Target<'_>,
    pods: &[(String, PodSpec)],
    window: Duration,
) -> Result<(), String> {
    let until = Instant::now() + window;
    let hosts: BTreeSet<String> = pods.iter().map(|(h, _)| h.clone()).collect();
    while Instant::now() < until {
        let now = statuses(target, &hosts).await?;
        for (host, pod) in pods {
            let running = now.get(host).map(Vec::as_slice).unwrap_or_default();
            if let Readiness::Failed { container, reason } =
                release::readiness(running, &pod.name, &pod.spec_hash)
            {
                let message = format!(
                    "`{container}` of pod `{}` on `{host}` failed within its monitor window: {reason}",
                    pod.name
                );
                return Err(with_logs(target, host, &container, message).await);
            }
        }
        tokio::time::sleep(
            target
                .poll
                .min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    Ok(())
}

/// When each replica became ready, as the deploy's events said: the last `started` or
/// `healthy` of each container, so a pod's time is its last container's. The monitor window of
/// a replica counts from then (not from the deploy's start, nor its end).
#[derive(Debug, Default)]
pub struct ReadyClock(BTreeMap<(String, String, u32), Instant>);

impl ReadyClock {
    /// Takes note of one progress item of the deploy.
    pub fn see(&mut self, p: &super::exec::Progress) {
        use super::flow::Event;
        if let super::exec::Progress::Event(Event::Started(at) | Event::Healthy(at)) = p {
            self.0.insert(
                (at.host.clone(), at.service.clone(), at.replica),
                Instant::now(),
            );
        }
    }

    /// Each of `pods` (host, spec) with the instant its monitor window ends: when it became
    /// ready (`fallback` when no event said so) plus the longest monitor of its services'
    /// policies, which is never shorter than their health check needs to fail after it passed
    /// (`start_period + interval × retries`).
    pub fn deadlines(
        &self,
        project: &crate::compose::model::Project,
        pods: &[(String, PodSpec)],
        fallback: Instant,
    ) -> Vec<(String, PodSpec, Instant)> {
        pods.iter()
            .map(|(host, spec)| {
                let ready = spec
                    .containers
                    .iter()
                    .filter_map(|c| {
                        self.0
                            .get(&(host.clone(), c.service.clone(), c.replica))
                            .copied()
                    })
                    .max()
                    .unwrap_or(fallback);
                let window = spec
                    .containers
                    .iter()
                    .map(|c| release::policy(project, &c.service, false).monitor)
                    .max()
                    .unwrap_or_default();
                (host.clone(), spec.clone(), ready + window)
            })
            .collect()
    }
}

/// Watches each pod until its own deadline ([`ReadyClock::deadlines`]): any that stops being
/// ready before it fails the rollout, with the failing container's last log lines.
pub async fn watch_each(
    target: &Target<'_>,
    pods: &[(String, PodSpec, Instant)],
) -> Result<(), String> {
    loop {
        let now = Instant::now();
        let open: Vec<(String, PodSpec)> = pods
            .iter()
            .filter(|(_, _, until)| *until > now)
            .map(|(h, p, _)| (h.clone(), p.clone()))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        let next = pods
            .iter()
            .map(|(_, _, until)| *until)
            .filter(|until| *until > now)
            .min()
            .unwrap_or(now);
        watch(target, &open, target.poll.min(next - now)).await?;
        if Instant::now() < next {
            // `watch` returned at once (a zero window): wait a round before asking again.
            tokio::time::sleep(
                target
                    .poll
                    .min(next.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
}

/// What a rollback to release `to` needs besides the hosts.
pub struct Back<'a> {
    pub project: &'a crate::compose::model::Project,
    /// Services, dependencies first (the graph's order).
    pub order: &'a [String],
    /// Every host's records, with their pods.
    pub records: &'a BTreeMap<String, Vec<ReleaseRecord>>,
    pub to: u64,
    /// The services to put back: pods of others are left alone.
    pub scope: &'a BTreeSet<String>,
    /// The secrets this run can deliver ([`release::secrets_by_hash`]).
    pub secrets: &'a BTreeMap<String, String>,
}

/// Puts every host that recorded release `back.to` back on it, honouring each service's
/// `rollback_config`. Returns the pods it changed (as `pod@host`).
pub async fn roll_back(
    target: &Target<'_>,
    back: &Back<'_>,
    note: &mut dyn FnMut(Note),
) -> Result<Vec<String>, String> {
    let mut pods: BTreeMap<String, Vec<PodSpec>> = BTreeMap::new();
    for (host, records) in back.records {
        if !target.hosts.contains_key(host) {
            continue;
        }
        if let Some(r) = records.iter().find(|r| r.number == back.to) {
            pods.insert(
                host.clone(),
                release::restore_secrets(&r.pods, back.secrets)?,
            );
        }
    }
    let hosts: BTreeSet<String> = pods.keys().cloned().collect();
    let observed = statuses(target, &hosts).await?;
    let moves = release::moves(&pods, &observed, back.scope);
    let policies: BTreeMap<String, Policy> = moves
        .keys()
        .map(|s| (s.clone(), release::policy(back.project, s, true)))
        .collect();
    let batches = release::batches(&moves, back.order, &policies);
    let changed: Vec<String> = batches
        .iter()
        .flat_map(|(_, ms)| ms)
        .map(|m| format!("{}@{}", m.pod(), m.host()))
        .collect();
    carry_out(target, &batches, &policies, back.project, note).await?;
    Ok(changed)
}

/// A release under way: what each host recorded, the history before it, and the release to go
/// back to if it fails.
#[derive(Debug, Clone)]
pub struct Begun {
    pub number: u64,
    pub records: BTreeMap<String, ReleaseRecord>,
    /// Every host's records before this one, with their pods.
    pub history: BTreeMap<String, Vec<ReleaseRecord>>,
    /// The release the fleet ran before ([`release::last_good`]).
    pub previous: Option<u64>,
}

/// What `begin` records besides the pods.
pub struct Head {
    pub changed: Vec<String>,
    pub managed: Vec<String>,
    pub rollback_of: Option<u64>,
    pub keep: u32,
}

/// Numbers the release and records it, in progress, on every connected host (the hosts without
/// pods too) before anything changes. A host that cannot record it fails the release: it could
/// not be rolled back there.
pub async fn begin(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    pods: &BTreeMap<String, Vec<PodSpec>>,
    head: Head,
    fences: &BTreeMap<String, u64>,
    timeout: Duration,
) -> Result<Begun, String> {
    let (history, failed) = fetch(hosts, project, true, timeout).await;
    if let Some((host, why)) = failed.iter().next() {
        return Err(format!(
            "host `{host}` could not list its releases ({why}); nothing was changed"
        ));
    }
    // Under the lock, a record still "in progress" belongs to a deploy that died.
    for (host, stale) in release::abandoned(&history) {
        let one = BTreeMap::from([(host, stale)]);
        let failed = self::record(hosts, one, head.keep, fences, timeout).await;
        if let Some((host, why)) = failed.into_iter().next() {
            return Err(format!(
                "host `{host}` could not update its releases ({why}); nothing was changed"
            ));
        }
    }
    let number = release::next_number(history.values().flatten());
    let owner = super::lock::owner();
    let record = ReleaseRecord {
        project: project.to_string(),
        number,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        owner: format!("{}@{}", owner.user, owner.machine),
        status: crate::proto::ReleaseStatus::InProgress,
        changed: head.changed,
        managed: head.managed,
        rollback_of: head.rollback_of,
        message: None,
        pods: Vec::new(),
    };
    let names: Vec<String> = hosts.keys().cloned().collect();
    let records = release::new_records(pods, &names, &record);
    let failed = self::record(hosts, records.clone(), head.keep, fences, timeout).await;
    if let Some((host, why)) = failed.iter().next() {
        return Err(format!(
            "host `{host}` could not record release {number} ({why}); nothing was changed"
        ));
    }
    let previous = release::last_good(&history);
    Ok(Begun {
        number,
        records,
        history,
        previous,
    })
}

/// How a release ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    /// Every host that changed is back on release `to`.
    RolledBack {
        to: u64,
        changed: Vec<String>,
        took: Duration,
    },
    /// Left as it is: why (no earlier release, `failure_action: pause`, or the rollback failed).
    Left(String),
}

/// Ends release `begun`: recorded succeeded when `failure` is `None`; otherwise rolled back to
/// the previous release on every host (unless a changed service says `failure_action: pause`
/// or `continue`), and recorded as rolled back, or failed with why not.
#[allow(clippy::too_many_arguments)]
pub async fn settle(
    target: &Target<'_>,
    begun: &Begun,
    failure: Option<String>,
    project: &crate::compose::model::Project,
    order: &[String],
    secrets: &BTreeMap<String, String>,
    keep: u32,
    note: &mut dyn FnMut(Note),
) -> Outcome {
    use crate::proto::ReleaseStatus;
    let Some(failure) = failure else {
        let records = with_status(&begun.records, ReleaseStatus::Succeeded, None);
        for (host, why) in record(
            target.hosts,
            records,
            keep,
            target.fences,
            target.request_timeout,
        )
        .await
        {
            note(Note::Warning(format!(
                "host `{host}` could not record release {} as succeeded: {why}",
                begun.number
            )));
        }
        return Outcome::Succeeded;
    };
    let head = begun.records.values().next();
    let changed: Vec<String> = head.map(|r| r.changed.clone()).unwrap_or_default();
    let holds = changed.iter().find(|s| {
        release::policy(project, s, false).failure_action != release::FailureAction::Rollback
    });
    let outcome = match (begun.previous, holds) {
        (_, Some(s)) => Outcome::Left(format!(
            "not rolled back: `{s}` says `failure_action: {}` in its update_config",
            match release::policy(project, s, false).failure_action {
                release::FailureAction::Pause => "pause",
                _ => "continue",
            }
        )),
        (None, None) => {
            Outcome::Left("not rolled back: no earlier release succeeded on every host".to_string())
        }
        (Some(to), None) => {
            let mut scope = release::scope(begun.records.values());
            for records in begun.history.values() {
                scope.extend(release::scope(records.iter().filter(|r| r.number == to)));
            }
            let back = Back {
                project,
                order,
                records: &begun.history,
                to,
                scope: &scope,
                secrets,
            };
            let started = Instant::now();
            match roll_back(target, &back, note).await {
                Ok(changed) => Outcome::RolledBack {
                    to,
                    changed,
                    took: started.elapsed(),
                },
                Err(why) => Outcome::Left(format!(
                    "rolling back to release {to} failed, and a rollback is never rolled back: {why}"
                )),
            }
        }
    };
    let (status, message) = match &outcome {
        Outcome::RolledBack { to, .. } => (
            ReleaseStatus::RolledBack,
            format!("{failure}; rolled back to release {to}"),
        ),
        Outcome::Left(why) => (ReleaseStatus::Failed, format!("{failure}; {why}")),
        Outcome::Succeeded => (ReleaseStatus::Succeeded, String::new()),
    };
    let records = with_status(&begun.records, status, Some(message));
    for (host, why) in record(
        target.hosts,
        records,
        keep,
        target.fences,
        target.request_timeout,
    )
    .await
    {
        note(Note::Warning(format!(
            "host `{host}` could not record how release {} ended: {why}",
            begun.number
        )));
    }
    outcome
}
