//! Release bookkeeping, pure: what a host records for a release (secrets replaced by their
//! hashes), the next release number, the fleet-wide listing merged from what each host recorded,
//! which release a rollback goes to, and the rollback itself as ordered batches of pod moves that
//! honour `rollback_config` (`parallelism`, `order`): never everything at once. No I/O: the
//! executor ([`super::rollout`]) reads the records from the hosts and performs the batches.
//!
//! A release is recorded on every host that answered, the hosts without pods too (their record is
//! empty), so "go back to release N" is defined on every host: pods of the release's services
//! that release N did not have there are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::compose::model::{Project, UpdateConfig};
use crate::proto::{PodSpec, PodStatus, ReleaseRecord, ReleaseStatus};

/// Records kept per project on each host unless `--keep-releases` says otherwise.
pub const DEFAULT_KEEP: u32 = 10;

/// The prefix that marks a secret's content replaced by its hash in a record.
const HASHED: &str = "sha256:";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `pods` as a record may hold them: each secret file's content replaced by `sha256:<hex>` of
/// the content (configs are kept: they are not secret). Hashed ones stay as they are (base64 has
/// no `:`, so the prefix cannot be content).
pub fn strip_secrets(pods: &[PodSpec]) -> Vec<PodSpec> {
    let mut out = pods.to_vec();
    for f in out
        .iter_mut()
        .flat_map(|p| &mut p.containers)
        .flat_map(|c| &mut c.files)
        .filter(|f| f.secret && !f.content_b64.starts_with(HASHED))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&f.content_b64)
            .unwrap_or_else(|_| f.content_b64.clone().into_bytes());
        f.content_b64 = format!("{HASHED}{}", sha256_hex(&bytes));
    }
    out
}

/// The secrets this run can deliver, by the hash of their content: what [`restore_secrets`]
/// fills a record's hashed secrets back in from.
pub fn secrets_by_hash(secrets: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    secrets
        .values()
        .map(|bytes| {
            (
                sha256_hex(bytes),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )
        })
        .collect()
}

/// `pods` of a record made deliverable again: each hashed secret gets the content with that
/// hash. A secret whose content changed since the record (none has that hash) cannot be restored:
/// the error names it and the pod.
pub fn restore_secrets(
    pods: &[PodSpec],
    by_hash: &BTreeMap<String, String>,
) -> Result<Vec<PodSpec>, String> {
    let mut out = pods.to_vec();
    for p in &mut out {
        for c in &mut p.containers {
            for f in c.files.iter_mut().filter(|f| f.secret) {
                let Some(hash) = f.content_b64.strip_prefix(HASHED) else {
                    continue;
                };
                match by_hash.get(hash) {
                    Some(content) => f.content_b64 = content.clone(),
                    None => {
                        return Err(format!(
                            "the secret at `{}` of pod `{}` changed since that release; its old \
                             content is not recorded anywhere (secrets never are), so the pod \
                             cannot be restored as it was",
                            f.target, p.name
                        ))
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The number of the next release: one past the highest any host recorded.
pub fn next_number<'a>(records: impl IntoIterator<Item = &'a ReleaseRecord>) -> u64 {
    records.into_iter().map(|r| r.number).max().unwrap_or(0) + 1
}

/// One row of `compose-fleet releases`: a release as the fleet recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub number: u64,
    pub started: u64,
    pub owner: String,
    /// The status most hosts agree on; a failure on any host wins over success.
    pub status: ReleaseStatus,
    pub changed: Vec<String>,
    pub rollback_of: Option<u64>,
    pub message: Option<String>,
    /// The hosts that recorded it.
    pub hosts: Vec<String>,
}

/// Merges each host's records (newest first or not) into one row per release number, newest
/// first. A release some host did not record lists only the hosts that did.
pub fn listing(per_host: &BTreeMap<String, Vec<ReleaseRecord>>) -> Vec<Row> {
    let mut rows: BTreeMap<u64, Row> = BTreeMap::new();
    for (host, records) in per_host {
        for r in records {
            let row = rows.entry(r.number).or_insert_with(|| Row {
                number: r.number,
                started: r.started,
                owner: r.owner.clone(),
                status: r.status,
                changed: Vec::new(),
                rollback_of: r.rollback_of,
                message: None,
                hosts: Vec::new(),
            });
            row.hosts.push(host.clone());
            row.status = worse(row.status, r.status);
            row.changed.extend(r.changed.iter().cloned());
            if row.message.is_none() {
                row.message = r.message.clone();
            }
        }
    }
    rows.into_values()
        .rev()
        .map(|mut r| {
            r.changed.sort();
            r.changed.dedup();
            r
        })
        .collect()
}

/// Of two hosts' statuses for one release, the one to show: failed, then rolled back, then in
/// progress, then succeeded.
fn worse(a: ReleaseStatus, b: ReleaseStatus) -> ReleaseStatus {
    let rank = |s| match s {
        ReleaseStatus::Failed => 3,
        ReleaseStatus::RolledBack => 2,
        ReleaseStatus::InProgress => 1,
        ReleaseStatus::Succeeded => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The release the fleet runs: the newest that succeeded on every host that recorded anything
/// (a failed release was rolled back, or left as it was, and is not "current").
pub fn last_good(per_host: &BTreeMap<String, Vec<ReleaseRecord>>) -> Option<u64> {
    good_releases(per_host).first().copied()
}

/// Numbers of the releases that succeeded on every host that recorded anything, newest first.
fn good_releases(per_host: &BTreeMap<String, Vec<ReleaseRecord>>) -> Vec<u64> {
    let recording: Vec<&String> = per_host
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(h, _)| h)
        .collect();
    listing(per_host)
        .into_iter()
        .filter(|r| r.status == ReleaseStatus::Succeeded)
        .filter(|r| recording.iter().all(|h| r.hosts.contains(h)))
        .map(|r| r.number)
        .collect()
}

/// Which release a rollback goes to. `to: Some(n)`: release `n`, which every host that has any
/// record must have recorded. `None`: the good release before the current one ([`last_good`]).
pub fn rollback_target(
    per_host: &BTreeMap<String, Vec<ReleaseRecord>>,
    to: Option<u64>,
) -> Result<u64, String> {
    let rows = listing(per_host);
    if rows.is_empty() {
        return Err("no release of this project is recorded on any host".into());
    }
    let recording: Vec<&String> = per_host
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(h, _)| h)
        .collect();
    match to {
        Some(n) => {
            let Some(row) = rows.iter().find(|r| r.number == n) else {
                let known: Vec<String> = rows.iter().map(|r| r.number.to_string()).collect();
                return Err(format!(
                    "release {n} is not recorded on any host (recorded: {}; older ones were pruned)",
                    known.join(", ")
                ));
            };
            let missing: Vec<&str> = recording
                .iter()
                .filter(|h| !row.hosts.contains(h))
                .map(|h| h.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "release {n} is not recorded on {} (pruned, or the host was unreachable when it was made); rolling back to it would leave those hosts unknown",
                    missing.join(", ")
                ));
            }
            Ok(n)
        }
        None => {
            let good = good_releases(per_host);
            match good.as_slice() {
                [_, before, ..] => Ok(*before),
                [current] => Err(format!(
                    "release {current} is the only good release recorded on every host; there is nothing before it to roll back to"
                )),
                [] => Err(
                    "no release succeeded on every host; `compose-fleet releases` lists what there is"
                        .into(),
                ),
            }
        }
    }
}

/// One pod's change in a rollback (or any re-application of recorded pods).
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    /// Run this spec (create, or replace what runs under its name).
    Apply { host: String, pod: PodSpec },
    /// Stop and delete this pod.
    Remove { host: String, pod: String },
}

impl Move {
    pub fn host(&self) -> &str {
        match self {
            Move::Apply { host, .. } | Move::Remove { host, .. } => host,
        }
    }

    pub fn pod(&self) -> &str {
        match self {
            Move::Apply { pod, .. } => &pod.name,
            Move::Remove { pod, .. } => pod,
        }
    }
}

/// What puts every host back on `target` (host → that host's recorded pods): the pods whose spec
/// hash differs or that are missing are applied; running pods of `scope`'s services that the
/// target does not have on that host are removed. Pods outside `scope` are left alone, and so are
/// hosts absent from `target` (they recorded nothing: unknown, not empty). Keyed by the service
/// each move is about (a pod's first container).
pub fn moves(
    target: &BTreeMap<String, Vec<PodSpec>>,
    observed: &BTreeMap<String, Vec<PodStatus>>,
    scope: &BTreeSet<String>,
) -> BTreeMap<String, Vec<Move>> {
    let mut out: BTreeMap<String, Vec<Move>> = BTreeMap::new();
    let service_of_spec = |p: &PodSpec| p.containers.first().map(|c| c.service.clone());
    let none = Vec::new();
    for (host, pods) in target {
        let running = observed.get(host).unwrap_or(&none);
        for p in pods {
            let same = running
                .iter()
                .any(|r| r.name == p.name && r.spec_hash == p.spec_hash);
            if !same {
                let service = service_of_spec(p).unwrap_or_default();
                out.entry(service).or_default().push(Move::Apply {
                    host: host.clone(),
                    pod: p.clone(),
                });
            }
        }
        for r in running {
            let Some(service) = r.containers.first().map(|c| c.service.clone()) else {
                continue;
            };
            let in_scope = r.containers.iter().all(|c| scope.contains(&c.service));
            if in_scope && !pods.iter().any(|p| p.name == r.name) {
                out.entry(service).or_default().push(Move::Remove {
                    host: host.clone(),
                    pod: r.name.clone(),
                });
            }
        }
    }
    out
}

/// How a service's pods are rolled (from `deploy.update_config` or `rollback_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Pods changed at once; at least 1.
    pub parallelism: usize,
    pub delay: Duration,
    /// Start the new pod before the old one stops (when they are different pods).
    pub start_first: bool,
    /// How long a changed pod must stay up (and healthy) before its batch counts as done.
    pub monitor: Duration,
    pub failure_action: FailureAction,
    pub max_failure_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    Rollback,
    Pause,
    Continue,
}

/// The policy for `service` from its `update_config` (or `rollback_config`), with defaults that
/// serve users: parallelism 1, start-first unless the service publishes a host port (two copies
/// cannot hold it), rollback on failure, and a monitor never shorter than the health check needs
/// to fail after it passed once (`start_period + interval × retries`; nothing without a health
/// check, where `monitor` is only what the file says: no wait is added to every deploy).
pub fn policy(project: &Project, service: &str, rollback: bool) -> Policy {
    let svc = project.services.get(service);
    let cfg: UpdateConfig = svc
        .and_then(|s| s.deploy.as_ref())
        .and_then(|d| {
            if rollback {
                d.rollback_config.clone()
            } else {
                d.update_config.clone()
            }
        })
        .unwrap_or_default();
    let publishes = svc.is_some_and(|s| s.ports.iter().any(|p| p.published.is_some()));
    let health_needs = svc
        .and_then(|s| s.healthcheck.as_ref())
        .filter(|h| !h.disable)
        .map(|h| {
            let interval = h.interval.map_or(Duration::from_secs(30), |d| d.0);
            let retries = u32::try_from(h.retries.unwrap_or(3)).unwrap_or(u32::MAX);
            h.start_period
                .map(|d| d.0)
                .unwrap_or_default()
                .saturating_add(interval.saturating_mul(retries))
        })
        .unwrap_or_default();
    let start_first = match cfg.order.as_deref() {
        Some("stop-first") => false,
        Some("start-first") => !publishes,
        _ => !publishes,
    };
    Policy {
        parallelism: cfg
            .parallelism
            .map(|p| usize::try_from(p).unwrap_or(usize::MAX))
            .filter(|p| *p > 0)
            .unwrap_or(1),
        delay: cfg.delay.map(|d| d.0).unwrap_or_default(),
        start_first,
        monitor: cfg
            .monitor
            .map(|d| d.0)
            .unwrap_or_default()
            .max(health_needs),
        failure_action: match cfg.failure_action.as_deref() {
            Some("pause") => FailureAction::Pause,
            Some("continue") => FailureAction::Continue,
            _ => FailureAction::Rollback,
        },
        max_failure_ratio: cfg.max_failure_ratio.unwrap_or(0.0).clamp(0.0, 1.0),
    }
}

/// The rollback as batches, in `order` of services (dependencies first; services not named come
/// last, by name): each service's moves in batches of its policy's `parallelism`, a pod and its
/// removal elsewhere counted once. In a batch, start-first puts applies before removes,
/// stop-first removes first. A batch holds one service's moves only.
pub fn batches(
    moves: &BTreeMap<String, Vec<Move>>,
    order: &[String],
    policies: &BTreeMap<String, Policy>,
) -> Vec<(String, Vec<Move>)> {
    let mut services: Vec<&String> = order.iter().filter(|s| moves.contains_key(*s)).collect();
    for s in moves.keys() {
        if !services.contains(&s) {
            services.push(s);
        }
    }
    let mut out = Vec::new();
    for service in services {
        let policy = policies.get(service);
        let parallelism = policy.map_or(1, |p| p.parallelism.max(1));
        let start_first = policy.is_none_or(|p| p.start_first);
        // Group by pod name: a moved pod's apply and remove go in the same batch.
        let mut by_pod: BTreeMap<&str, Vec<&Move>> = BTreeMap::new();
        for m in &moves[service] {
            by_pod.entry(m.pod()).or_default().push(m);
        }
        let groups: Vec<Vec<&Move>> = by_pod.into_values().collect();
        for chunk in groups.chunks(parallelism) {
            let mut batch: Vec<Move> = chunk.iter().flatten().map(|m| (*m).clone()).collect();
            batch.sort_by_key(|m| {
                let apply = matches!(m, Move::Apply { .. });
                (
                    apply != start_first,
                    m.host().to_string(),
                    m.pod().to_string(),
                )
            });
            out.push((service.clone(), batch));
        }
    }
    out
}

/// The services of `records` (any host's) changed or touched: their `managed` union.
pub fn scope<'a>(records: impl IntoIterator<Item = &'a ReleaseRecord>) -> BTreeSet<String> {
    records
        .into_iter()
        .flat_map(|r| r.managed.iter().cloned())
        .collect()
}

/// Records left "in progress" by a deploy that died (killed, or cut off past its lease): seen
/// under the deploy lock, nobody is still making them. Each comes back marked failed, saying so.
pub fn abandoned(per_host: &BTreeMap<String, Vec<ReleaseRecord>>) -> Vec<(String, ReleaseRecord)> {
    per_host
        .iter()
        .flat_map(|(host, records)| {
            records
                .iter()
                .filter(|r| r.status == ReleaseStatus::InProgress)
                .map(move |r| {
                    let mut r = r.clone();
                    r.status = ReleaseStatus::Failed;
                    r.message = Some(
                        "the deploy that made it ended without saying how it went (killed, or \
                         cut off past its lease); the next release took over from what runs"
                            .into(),
                    );
                    (host.clone(), r)
                })
        })
        .collect()
}

/// What one release records on each host: `pods` (host → its desired pods; a host of `hosts`
/// without any gets an empty record), secrets replaced by their hashes, in progress.
pub fn new_records(
    pods: &BTreeMap<String, Vec<PodSpec>>,
    hosts: &[String],
    head: &ReleaseRecord,
) -> BTreeMap<String, ReleaseRecord> {
    hosts
        .iter()
        .map(|h| {
            let mut r = head.clone();
            r.pods = strip_secrets(pods.get(h).map(Vec::as_slice).unwrap_or_default());
            (h.clone(), r)
        })
        .collect()
}

/// The services a plan's steps change: those of the pods it creates, replaces or restarts (from
/// `desired`), and of the pods it removes (from what the hosts run). Sorted.
pub fn changed_services(
    steps: &[super::flow::Step],
    desired: &super::desired::Desired,
    observed: &BTreeMap<String, Vec<PodStatus>>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for s in steps {
        if let Some(p) = desired.pod(&s.host, &s.pod) {
            out.extend(p.containers.iter().map(|c| c.service.clone()));
        } else if let Some(p) = observed
            .get(&s.host)
            .and_then(|pods| pods.iter().find(|p| p.name == s.pod))
        {
            out.extend(p.containers.iter().map(|c| c.service.clone()));
        }
    }
    out.into_iter().collect()
}

/// The pods a release's `steps` replace or restart, with their specs from `specs` (keyed by host
/// and pod): what `up` monitors after the deploy, each for its own window
/// ([`super::rollout::ReadyClock::deadlines`]). A created pod (a new service, a scale-up, a
/// project's first release) is not: as with swarm's `update_config`, `monitor` governs updates,
/// so a first `up` ends when everything is ready instead of waiting out a window after it.
pub fn updated_pods(
    steps: &[super::flow::Step],
    specs: &BTreeMap<(String, String), PodSpec>,
) -> Vec<(String, PodSpec)> {
    steps
        .iter()
        .filter(|s| {
            matches!(
                s.change,
                super::flow::Change::Replace | super::flow::Change::Restart
            )
        })
        .filter_map(|s| {
            let spec = specs.get(&(s.host.clone(), s.pod.clone()))?;
            Some((s.host.clone(), spec.clone()))
        })
        .collect()
}

/// Where a pod that was just applied stands, from its host's `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every container runs (healthy, with a health check) or exited 0.
    Ready,
    Pending,
    /// It will not get ready: why, and the container at fault (`service.replica`).
    Failed {
        container: String,
        reason: String,
    },
}

/// Whether the pod `name` with spec hash `hash` is ready, among a host's `pods`. A container
/// that restarted since it was applied counts as failed: it crashed.
pub fn readiness(pods: &[PodStatus], name: &str, hash: &str) -> Readiness {
    let Some(pod) = pods.iter().find(|p| p.name == name && p.spec_hash == hash) else {
        return Readiness::Pending;
    };
    let mut pending = false;
    for c in &pod.containers {
        let container = format!("{}.{}", c.service, c.replica);
        let failed = |reason: String| Readiness::Failed {
            container: container.clone(),
            reason,
        };
        match (c.state.as_str(), c.health.as_deref(), c.exit_code) {
            ("exited", _, Some(0)) => {}
            ("exited" | "failed", _, code) => {
                return failed(match code {
                    Some(code) => format!("exited with code {code}"),
                    None => "failed to start".into(),
                })
            }
            (_, Some("unhealthy"), _) => return failed("unhealthy".into()),
            (_, _, _) if c.restarts > 0 => {
                return failed(format!(
                    "restarted {} time{} (it keeps exiting)",
                    c.restarts,
                    if c.restarts == 1 { "" } else { "s" }
                ))
            }
            ("running", Some("healthy") | None, _) => {}
            _ => pending = true,
        }
    }
    if pending {
        Readiness::Pending
    } else {
        Readiness::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ContainerStatus, FileDelivery};

    fn pod(name: &str, service: &str, hash: &str) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "hostname": name, "spec_hash": hash,
            "containers": [{"service": service, "replica": 1, "image": "img"}],
        }))
        .expect("a pod spec")
    }

    fn status(name: &str, service: &str, hash: &str) -> PodStatus {
        PodStatus {
            project: "p".into(),
            name: name.into(),
            spec_hash: hash.into(),
            ip: None,
            instance: None,
            outgoing: None,
            containers: vec![ContainerStatus {
                service: service.into(),
                replica: 1,
                state: "running".into(),
                health: None,
                pid: Some(1),
                exit_code: None,
                restarts: 0,
                started_at: None,
                stopped: false,
            }],
        }
    }

    fn record(number: u64, status: ReleaseStatus) -> ReleaseRecord {
        ReleaseRecord {
            project: "p".into(),
            number,
            started: number,
            owner: "ana@laptop".into(),
            status,
            changed: vec![format!("s{number}")],
            managed: vec!["web".into()],
            rollback_of: None,
            message: None,
            pods: Vec::new(),
        }
    }

    #[test]
    fn readiness_waits_for_health_and_fails_on_exit_unhealthy_or_restarts() {
        let mut s = status("web-1", "web", "h");
        let pods = |s: &PodStatus| vec![s.clone()];
        assert_eq!(readiness(&pods(&s), "web-1", "other"), Readiness::Pending);
        assert_eq!(readiness(&pods(&s), "web-1", "h"), Readiness::Ready);
        s.containers[0].health = Some("starting".into());
        assert_eq!(readiness(&pods(&s), "web-1", "h"), Readiness::Pending);
        s.containers[0].health = Some("healthy".into());
        assert_eq!(readiness(&pods(&s), "web-1", "h"), Readiness::Ready);
        s.containers[0].health = Some("unhealthy".into());
        assert!(matches!(
            readiness(&pods(&s), "web-1", "h"),
            Readiness::Failed { ref container, ref reason } if container == "web.1" && reason == "unhealthy"
        ));
        s.containers[0].health = None;
        s.containers[0].restarts = 2;
        assert!(matches!(
            readiness(&pods(&s), "web-1", "h"),
            Readiness::Failed { .. }
        ));
        s.containers[0].restarts = 0;
        s.containers[0].state = "exited".into();
        s.containers[0].exit_code = Some(0);
        assert_eq!(readiness(&pods(&s), "web-1", "h"), Readiness::Ready);
        s.containers[0].exit_code = Some(3);
        assert!(matches!(
            readiness(&pods(&s), "web-1", "h"),
            Readiness::Failed { ref reason, .. } if reason == "exited with code 3"
        ));
        s.containers[0].state = "created".into();
        s.containers[0].exit_code = None;
        assert_eq!(readiness(&pods(&s), "web-1", "h"), Readiness::Pending);
    }

    #[test]
    fn secrets_leave_as_hashes_and_come_back_only_with_the_same_content() {
        let mut p = pod("web-1", "web", "h");
        p.containers[0].files.push(FileDelivery {
            target: "/run/secrets/db".into(),
            content_b64: base64::engine::general_purpose::STANDARD.encode("hunter2"),
            mode: 0o400,
            secret: true,
            uid: None,
            gid: None,
        });
        p.containers[0].files.push(FileDelivery {
            target: "/etc/app.conf".into(),
            content_b64: "Y29uZg==".into(),
            mode: 0o444,
            secret: false,
            uid: None,
            gid: None,
        });
        let stripped = strip_secrets(std::slice::from_ref(&p));
        let json = serde_json::to_string(&stripped).expect("json");
        assert!(!json.contains("aHVudGVyMg=="), "no secret content: {json}");
        assert!(json.contains("sha256:"));
        assert_eq!(stripped[0].containers[0].files[1].content_b64, "Y29uZg==");
        assert_eq!(
            strip_secrets(&stripped),
            stripped,
            "stripping twice changes nothing"
        );
        let have = secrets_by_hash(&BTreeMap::from([("db".into(), b"hunter2".to_vec())]));
        assert_eq!(
            restore_secrets(&stripped, &have).expect("restored"),
            vec![p]
        );
        let changed = secrets_by_hash(&BTreeMap::from([("db".into(), b"other".to_vec())]));
        let err = restore_secrets(&stripped, &changed).expect_err("cannot restore");
        assert!(
            err.contains("/run/secrets/db") && err.contains("web-1"),
            "{err}"
        );
    }

    #[test]
    fn changed_services_come_from_desired_pods_and_from_removed_ones_running() {
        use crate::deploy::desired::{self, PodInput};
        use crate::deploy::diff::RemoveReason;
        use crate::deploy::flow::{Change, Step};
        let inputs = vec![
            PodInput {
                host: "h1".into(),
                spec: pod("web-1", "web", ""),
                networks: vec![],
            },
            PodInput {
                host: "h1".into(),
                spec: pod("db-1", "db", ""),
                networks: vec![],
            },
        ];
        let all: BTreeSet<String> = ["web", "db", "old"].map(String::from).into();
        let desired = desired::build(inputs, &BTreeMap::new(), all.clone(), all).expect("desired");
        let step = |pod: &str, change| Step {
            host: "h1".into(),
            pod: pod.into(),
            change,
            waits_for: vec![],
        };
        let steps = [
            step("web-1", Change::Replace),
            step("old-1", Change::Remove(RemoveReason::Orphan)),
        ];
        let observed = BTreeMap::from([("h1".to_string(), vec![status("old-1", "old", "o")])]);
        assert_eq!(
            changed_services(&steps, &desired, &observed),
            ["old", "web"]
        );
        assert!(changed_services(&[], &desired, &observed).is_empty());
    }

    #[test]
    fn new_records_cover_every_host_and_strip_secrets() {
        let head = record(4, ReleaseStatus::InProgress);
        let pods = BTreeMap::from([("h1".to_string(), vec![pod("web-1", "web", "x")])]);
        let records = new_records(&pods, &["h1".into(), "h2".into()], &head);
        assert_eq!(records.len(), 2);
        assert_eq!(records["h1"].pods.len(), 1);
        assert!(
            records["h2"].pods.is_empty(),
            "a host without pods records an empty set"
        );
        assert_eq!(records["h2"].number, 4);
    }

    #[test]
    fn records_a_dead_deploy_left_in_progress_come_back_failed() {
        let per_host = BTreeMap::from([
            (
                "h1".to_string(),
                vec![
                    record(2, ReleaseStatus::InProgress),
                    record(1, ReleaseStatus::Succeeded),
                ],
            ),
            ("h2".to_string(), vec![record(1, ReleaseStatus::Succeeded)]),
        ]);
        let fixed = abandoned(&per_host);
        assert_eq!(fixed.len(), 1);
        assert_eq!((fixed[0].0.as_str(), fixed[0].1.number), ("h1", 2));
        assert_eq!(fixed[0].1.status, ReleaseStatus::Failed);
        assert!(fixed[0]
            .1
            .message
            .as_deref()
            .unwrap_or("")
            .contains("killed"));
    }

    #[test]
    fn the_updated_pods_are_monitored_each_for_the_longest_of_monitor_and_health_check() {
        use crate::deploy::diff::RemoveReason;
        use crate::deploy::flow::{Change, Step};
        let yaml = r#"
services:
  web:
    image: x
    healthcheck: {test: ["CMD", "true"], interval: 1s, retries: 2}
    deploy: {update_config: {monitor: 9s}}
  api:
    image: x
  db:
    image: x
    healthcheck: {test: ["CMD", "true"], interval: 5s, retries: 3}
    deploy: {update_config: {monitor: 1s}}
  cache:
    image: x
    healthcheck: {test: ["CMD", "true"], interval: 5s, retries: 3}
"#;
        let fs = crate::compose::MemoryFs::new().with("/p/compose.yaml", yaml);
        let mut opts = crate::compose::LoadOptions::for_file("/p/compose.yaml");
        opts.project_name = Some("t".into());
        let project = crate::compose::load(&opts, &crate::compose::Environment::new(), &fs)
            .expect("loads")
            .project;
        let specs = BTreeMap::from([
            (
                ("h1".to_string(), "db-1".to_string()),
                pod("db-1", "db", "d"),
            ),
            (
                ("h1".to_string(), "cache-1".to_string()),
                pod("cache-1", "cache", "c"),
            ),
            (
                ("h1".to_string(), "web-1".to_string()),
                pod("web-1", "web", "w"),
            ),
            (
                ("h1".to_string(), "api-1".to_string()),
                pod("api-1", "api", "a"),
            ),
        ]);
        let step = |pod: &str, change| Step {
            host: "h1".into(),
            pod: pod.into(),
            change,
            waits_for: vec![],
        };
        let pods = updated_pods(
            &[
                step("api-1", Change::Create),
                step("old-1", Change::Remove(RemoveReason::Orphan)),
                step("cache-1", Change::Retire),
            ],
            &specs,
        );
        assert!(
            pods.is_empty(),
            "a creation, a removal and a retirement are not monitored: {pods:?}"
        );
        let pods = updated_pods(
            &[
                step("api-1", Change::Create),
                step("web-1", Change::Replace),
                step("db-1", Change::Restart),
            ],
            &specs,
        );
        let names: Vec<&str> = pods.iter().map(|(_, p)| p.name.as_str()).collect();
        assert_eq!(names, ["web-1", "db-1"], "replacements and restarts are");
        // Each pod's window, from when it became ready (here: no event, so the fallback).
        let window = |pod: &str| {
            let pods = updated_pods(&[step(pod, Change::Replace)], &specs);
            let at = std::time::Instant::now();
            let due = crate::deploy::rollout::ReadyClock::default().deadlines(&project, &pods, at);
            assert_eq!(due.len(), 1);
            due[0].2 - at
        };
        assert_eq!(
            window("api-1"),
            Duration::ZERO,
            "no health check, no monitor: no wait"
        );
        assert_eq!(
            window("web-1"),
            Duration::from_secs(9),
            "the monitor asked for"
        );
        assert_eq!(
            window("db-1"),
            Duration::from_secs(15),
            "a monitor asked for covers 5s × 3"
        );
        assert_eq!(
            window("cache-1"),
            Duration::from_secs(15),
            "a health check alone is watched as long as it needs to fail (5s × 3)"
        );
    }

    #[test]
    fn numbers_grow_past_the_highest_any_host_recorded() {
        assert_eq!(next_number([]), 1);
        let a = record(3, ReleaseStatus::Succeeded);
        let b = record(7, ReleaseStatus::Failed);
        assert_eq!(next_number([&a, &b]), 8);
    }

    #[test]
    fn the_listing_merges_hosts_and_a_failure_anywhere_shows() {
        let per_host = BTreeMap::from([
            (
                "h1".to_string(),
                vec![
                    record(2, ReleaseStatus::Succeeded),
                    record(1, ReleaseStatus::Succeeded),
                ],
            ),
            (
                "h2".to_string(),
                vec![
                    record(2, ReleaseStatus::RolledBack),
                    record(1, ReleaseStatus::Succeeded),
                ],
            ),
        ]);
        let rows = listing(&per_host);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].number, 2);
        assert_eq!(rows[0].status, ReleaseStatus::RolledBack);
        assert_eq!(rows[0].hosts, ["h1", "h2"]);
        assert_eq!(rows[1].status, ReleaseStatus::Succeeded);
        assert_eq!(rows[1].changed, ["s1"]);
    }

    #[test]
    fn the_rollback_target_is_the_last_good_release_present_everywhere() {
        let both = |records: Vec<ReleaseRecord>| {
            BTreeMap::from([
                ("h1".to_string(), records.clone()),
                ("h2".to_string(), records),
            ])
        };
        let mut per_host = both(vec![
            record(4, ReleaseStatus::Succeeded),
            record(3, ReleaseStatus::RolledBack),
            record(2, ReleaseStatus::Succeeded),
            record(1, ReleaseStatus::Succeeded),
        ]);
        assert_eq!(rollback_target(&per_host, None), Ok(2));
        assert_eq!(rollback_target(&per_host, Some(1)), Ok(1));
        let err = rollback_target(&per_host, Some(9)).expect_err("unknown");
        assert!(
            err.contains("release 9") && err.contains("4, 3, 2, 1"),
            "{err}"
        );
        // Release 2 pruned on h2: not a default target, refused by number naming the host.
        per_host
            .get_mut("h2")
            .expect("h2")
            .retain(|r| r.number != 2);
        assert_eq!(rollback_target(&per_host, None), Ok(1));
        let err = rollback_target(&per_host, Some(2)).expect_err("missing on h2");
        assert!(err.contains("h2"), "{err}");
        assert!(rollback_target(&BTreeMap::new(), None).is_err());
        let only_one = both(vec![record(1, ReleaseStatus::Succeeded)]);
        assert!(rollback_target(&only_one, None)
            .expect_err("nothing before")
            .contains("release 1 is the only good release"));
        assert_eq!(last_good(&only_one), Some(1));
        // A rolled-back release is not current: the one before it is.
        let after_failure = both(vec![
            record(3, ReleaseStatus::RolledBack),
            record(2, ReleaseStatus::Succeeded),
            record(1, ReleaseStatus::Succeeded),
        ]);
        assert_eq!(last_good(&after_failure), Some(2));
        assert_eq!(rollback_target(&after_failure, None), Ok(1));
        assert_eq!(last_good(&BTreeMap::new()), None);
    }

    #[test]
    fn moves_apply_what_differs_and_remove_what_the_target_lacks_in_scope() {
        let target = BTreeMap::from([
            (
                "h1".to_string(),
                vec![pod("web-1", "web", "old"), pod("db-1", "db", "d")],
            ),
            ("h2".to_string(), vec![]),
        ]);
        let observed = BTreeMap::from([
            (
                "h1".to_string(),
                vec![status("web-1", "web", "new"), status("db-1", "db", "d")],
            ),
            (
                "h2".to_string(),
                vec![status("web-2", "web", "new"), status("cron-1", "cron", "c")],
            ),
            ("h3".to_string(), vec![status("web-3", "web", "new")]),
        ]);
        let scope = BTreeSet::from(["web".to_string(), "db".to_string()]);
        let m = moves(&target, &observed, &scope);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["web"], "db is unchanged");
        let web: Vec<(&str, &str, bool)> = m["web"]
            .iter()
            .map(|m| (m.host(), m.pod(), matches!(m, Move::Apply { .. })))
            .collect();
        // cron is out of scope; h3 recorded nothing, so it is left alone.
        assert_eq!(web, [("h1", "web-1", true), ("h2", "web-2", false)]);
    }

    fn pol(parallelism: usize, start_first: bool) -> Policy {
        Policy {
            parallelism,
            delay: Duration::ZERO,
            start_first,
            monitor: Duration::ZERO,
            failure_action: FailureAction::Rollback,
            max_failure_ratio: 0.0,
        }
    }

    #[test]
    fn batches_follow_the_order_parallelism_and_start_first() {
        let apply = |h: &str, n: &str, s: &str| Move::Apply {
            host: h.into(),
            pod: pod(n, s, "x"),
        };
        let remove = |h: &str, n: &str| Move::Remove {
            host: h.into(),
            pod: n.into(),
        };
        let moves = BTreeMap::from([
            (
                "web".to_string(),
                vec![
                    apply("h1", "web-1", "web"),
                    remove("h2", "web-1"),
                    apply("h2", "web-2", "web"),
                    apply("h3", "web-3", "web"),
                ],
            ),
            ("db".to_string(), vec![apply("h1", "db-1", "db")]),
        ]);
        let policies = BTreeMap::from([
            ("web".to_string(), pol(2, false)),
            ("db".to_string(), pol(1, true)),
        ]);
        let b = batches(&moves, &["db".into(), "web".into()], &policies);
        let shape: Vec<(String, Vec<String>)> = b
            .iter()
            .map(|(s, ms)| {
                (
                    s.clone(),
                    ms.iter()
                        .map(|m| {
                            format!(
                                "{}{}@{}",
                                if matches!(m, Move::Apply { .. }) {
                                    "+"
                                } else {
                                    "-"
                                },
                                m.pod(),
                                m.host()
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("db".to_string(), vec!["+db-1@h1".to_string()]),
                (
                    "web".to_string(),
                    // stop-first: the moved pod's old copy goes before the new one starts.
                    vec![
                        "-web-1@h2".to_string(),
                        "+web-1@h1".to_string(),
                        "+web-2@h2".to_string()
                    ]
                ),
                ("web".to_string(), vec!["+web-3@h3".to_string()]),
            ]
        );
        // Start-first: applies first. No policy: one pod at a time.
        let b = batches(&moves, &[], &BTreeMap::new());
        assert_eq!(b.len(), 4, "{b:?}");
        assert!(matches!(b[1].1[0], Move::Apply { .. }));
    }

    #[test]
    fn policies_default_to_safe_values_and_the_monitor_covers_the_health_check() {
        let yaml = r#"
services:
  web:
    image: x
    ports: ["8080:80"]
    healthcheck: {test: ["CMD", "true"], interval: 2s, retries: 3, start_period: 1s}
    deploy:
      update_config: {parallelism: 2, monitor: 1s, order: start-first, failure_action: pause}
      rollback_config: {parallelism: 0}
  api:
    image: x
"#;
        let fs = crate::compose::MemoryFs::new().with("/p/compose.yaml", yaml);
        let mut opts = crate::compose::LoadOptions::for_file("/p/compose.yaml");
        opts.project_name = Some("t".into());
        let project = crate::compose::load(&opts, &crate::compose::Environment::new(), &fs)
            .expect("loads")
            .project;
        let web = policy(&project, "web", false);
        assert_eq!(web.parallelism, 2);
        assert!(!web.start_first, "a published port forbids start-first");
        assert_eq!(web.monitor, Duration::from_secs(7), "1s + 2s × 3, not 1s");
        assert_eq!(web.failure_action, FailureAction::Pause);
        assert_eq!(
            policy(&project, "web", true).parallelism,
            1,
            "0 is never all at once"
        );
        let api = policy(&project, "api", false);
        assert_eq!(
            (
                api.parallelism,
                api.start_first,
                api.monitor,
                api.failure_action
            ),
            (1, true, Duration::ZERO, FailureAction::Rollback)
        );
    }
}
