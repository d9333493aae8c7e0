//! Desired against observed: per host, which pods to create, replace, remove or keep. Pure.
//!
//! A pod is identified by its name within the project (`web-1`) and compared by spec hash:
//! - desired and absent on its host → **create**;
//! - desired and present with another hash → **replace**;
//! - desired and present with the same hash → **keep** (nothing is sent for it), unless a
//!   container of it was stopped by `compose-fleet stop` → **restart** (as docker compose's `up`
//!   starts stopped containers);
//! - present and not desired on that host → **remove**, for one of the [`RemoveReason`]s;
//! - present, of a service the compose file no longer defines → an **orphan**: reported, and
//!   removed only with `remove_orphans` (as `docker compose up --remove-orphans`);
//! - present, of a service the file defines but this run does not manage (disabled by profiles,
//!   or left out of `up SERVICE…`) → **untouched**.
//!
//! Everything is sorted (hosts by name, pods by name) so that the same inputs print the same plan.

use std::collections::{BTreeMap, BTreeSet};

use super::desired::Desired;

/// A pod that runs on a host now, as the agent reports it (`Status` → `PodStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    pub spec_hash: String,
    /// The services of its containers.
    pub services: Vec<String>,
    /// A container of it was stopped by `compose-fleet stop` (and not started since).
    pub stopped: bool,
    /// A start-first replacement left its previous generation running beside it (the deploy
    /// ended before retiring it).
    pub outgoing: bool,
}

/// What runs now: host → the project's pods there. Hosts that run nothing may be absent.
pub type Observed = BTreeMap<String, Vec<ObservedPod>>;

/// Why a running pod goes away.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoveReason {
    /// Its name is desired on another host: removed once the pod there has started (or at once
    /// when the pod there is kept).
    Moved { to: String },
    /// Its service is managed but the pod is not desired anywhere: fewer replicas, or its services
    /// now form other pods.
    NotDesired,
    /// None of its services is in the compose file any more (only with `remove_orphans`).
    Orphan,
}

/// The changes on one host. Each list is sorted by pod name; a pod name is in at most one list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostDiff {
    pub create: Vec<String>,
    pub replace: Vec<String>,
    /// Kept pods to start again: a container was stopped by the user.
    pub restart: Vec<String>,
    pub remove: Vec<(String, RemoveReason)>,
    pub keep: Vec<String>,
    /// Orphans left running (`remove_orphans` not set): the CLI says so.
    pub orphans: Vec<String>,
    /// Pods of defined services this run does not manage.
    pub untouched: Vec<String>,
    /// Kept (or restarted) pods whose outgoing generation still runs: it is retired.
    pub retire: Vec<String>,
}

impl HostDiff {
    fn is_noop(&self) -> bool {
        self.create.is_empty()
            && self.replace.is_empty()
            && self.restart.is_empty()
            && self.remove.is_empty()
            && self.retire.is_empty()
    }
}

/// Every host's changes. Hosts that have nothing desired and nothing observed are absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    pub hosts: BTreeMap<String, HostDiff>,
}

impl Diff {
    /// Nothing to create, replace or remove anywhere (orphans left running do not count).
    pub fn is_noop(&self) -> bool {
        self.hosts.values().all(HostDiff::is_noop)
    }

    /// The orphans left running, as `(host, pod)`.
    pub fn orphans(&self) -> Vec<(&str, &str)> {
        self.hosts
            .iter()
            .flat_map(|(h, d)| d.orphans.iter().map(move |p| (h.as_str(), p.as_str())))
            .collect()
    }
}

/// Compares `desired` with `observed`.
pub fn diff(desired: &Desired, observed: &Observed, remove_orphans: bool) -> Diff {
    // Where each desired pod name goes, to tell a move from a removal.
    let desired_host: BTreeMap<&str, &str> = desired
        .pods()
        .map(|p| (p.name.as_str(), p.host.as_str()))
        .collect();
    let hosts: BTreeSet<&String> = desired.hosts.keys().chain(observed.keys()).collect();
    let mut out = Diff::default();
    for host in hosts {
        let mut d = HostDiff::default();
        let running: BTreeMap<&str, &ObservedPod> = observed
            .get(host)
            .into_iter()
            .flatten()
            .map(|p| (p.name.as_str(), p))
            .collect();
        for pod in desired.hosts.get(host).into_iter().flatten() {
            match running.get(pod.name.as_str()) {
                None => d.create.push(pod.name.clone()),
                Some(o) if o.spec_hash == pod.spec_hash && o.stopped => {
                    d.restart.push(pod.name.clone())
                }
                Some(o) if o.spec_hash == pod.spec_hash => {
                    if o.outgoing {
                        d.retire.push(pod.name.clone());
                    }
                    d.keep.push(pod.name.clone())
                }
                Some(_) => d.replace.push(pod.name.clone()),
            }
        }
        for (name, pod) in &running {
            let to = desired_host.get(name).copied();
            if to == Some(host.as_str()) {
                continue;
            }
            let managed = pod.services.iter().any(|s| desired.managed.contains(s));
            let defined = pod.services.iter().any(|s| desired.defined.contains(s));
            let name = name.to_string();
            match to {
                Some(to) => d.remove.push((name, RemoveReason::Moved { to: to.into() })),
                None if managed => d.remove.push((name, RemoveReason::NotDesired)),
                None if defined => d.untouched.push(name),
                None if remove_orphans => d.remove.push((name, RemoveReason::Orphan)),
                None => d.orphans.push(name),
            }
        }
        // `running` is sorted by name and so are the desired pods: every list is sorted.
        out.hosts.insert(host.clone(), d);
    }
    out
}
