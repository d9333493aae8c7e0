//! The service map as this host sees it: the fleet-wide map the CLI pushed (one per project),
//! corrected by what this agent observes of its own replicas (running and healthy, or being
//! stopped). From it come the VIP rules ([`super::vip`]) and the DNS answers ([`super::dns`]).
//! Pure: no kernel, no sockets.
//!
//! Scoping: a name is answered for the asking pod only from its own project, and only with
//! services that share a compose network with the asking pod's service (a pod that runs no
//! service of the map is on the project's default network).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::vip::Vip;
use crate::proto::net::Ipv4Net;
use crate::proto::service::{Endpoint, EndpointMode, Service, ServiceMap, DEFAULT_NETWORK};

/// What the host knows of services.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Registry {
    /// The pushed maps, by project.
    #[serde(default)]
    pub maps: BTreeMap<String, ServiceMap>,
    /// This host's replicas that take traffic (`project/pod`), as last observed; `None` until
    /// the first observation (the pushed health stands until then).
    #[serde(skip)]
    local_up: Option<BTreeSet<String>>,
    /// Bumped by [`Registry::leaving`]: an observation taken before it is stale (it may still
    /// show a pod that is now being stopped).
    #[serde(skip)]
    generation: u64,
    /// Turns the dnsrr order.
    #[serde(skip)]
    rotation: usize,
}

/// Why a pushed map is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct MapError(pub String);

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn key(project: &str, pod: &str) -> String {
    format!("{project}/{pod}")
}

impl Registry {
    /// Checks `map` against the other projects' maps: a VIP outside `range`, or one another
    /// service already holds, would send connections to the wrong place.
    pub fn check(&self, map: &ServiceMap, range: Ipv4Net) -> Result<(), MapError> {
        let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for (p, m) in &self.maps {
            if *p == map.project {
                continue;
            }
            for s in &m.services {
                if let Some(v) = s.vip {
                    seen.insert(v, format!("{p}/{}", s.name));
                }
            }
        }
        for s in &map.services {
            let Some(v) = s.vip else { continue };
            if !range.contains(v) {
                return Err(MapError(format!(
                    "service {}/{} has the VIP {v}, outside the service range {range}",
                    map.project, s.name
                )));
            }
            let me = format!("{}/{}", map.project, s.name);
            if let Some(other) = seen.insert(v, me.clone()) {
                return Err(MapError(format!(
                    "services {other} and {me} both have the VIP {v}"
                )));
            }
        }
        Ok(())
    }

    /// Replaces the map of `map.project` (an empty map forgets the project).
    pub fn set(&mut self, map: ServiceMap) {
        if map.services.is_empty() {
            self.maps.remove(&map.project);
        } else {
            self.maps.insert(map.project.clone(), map);
        }
    }

    /// The generation an observation must be taken at to be accepted by
    /// [`observed`](Self::observed).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records which local replicas take traffic, observed at `generation`. Returns whether
    /// anything changed (the rules must be rewritten then).
    pub fn observed(&mut self, up: BTreeSet<String>, generation: u64) -> bool {
        if generation != self.generation || self.local_up.as_ref() == Some(&up) {
            return false;
        }
        self.local_up = Some(up);
        true
    }

    /// Takes pods of `project` out of every set before they are stopped. Returns whether any was
    /// in one.
    pub fn leaving(&mut self, project: &str, pods: &[String], subnet: Option<Ipv4Net>) -> bool {
        self.generation += 1;
        let mut up = match self.local_up.take() {
            Some(up) => up,
            // Never observed: what the map says of the local replicas.
            None => self
                .maps
                .iter()
                .flat_map(|(p, m)| m.services.iter().map(move |s| (p, s)))
                .flat_map(|(p, s)| s.replicas.iter().map(move |e| (p, e)))
                .filter(|(_, e)| e.healthy && subnet.is_some_and(|n| n.contains(e.addr)))
                .map(|(p, e)| key(p, &e.pod))
                .collect(),
        };
        let mut changed = false;
        for pod in pods {
            changed |= up.remove(&key(project, pod));
        }
        self.local_up = Some(up);
        changed
    }

    /// Whether replica `e` of a service of `project` takes traffic, as seen from this host
    /// (whose pod subnet is `subnet`).
    fn takes_traffic(&self, project: &str, e: &Endpoint, subnet: Option<Ipv4Net>) -> bool {
        match (&self.local_up, subnet) {
            (Some(up), Some(n)) if n.contains(e.addr) => up.contains(&key(project, &e.pod)),
            _ => e.healthy,
        }
    }

    /// The VIPs and the replicas each balances over.
    pub fn vips(&self, subnet: Option<Ipv4Net>) -> Vec<Vip> {
        let mut out = Vec::new();
        for (p, m) in &self.maps {
            for s in &m.services {
                let (Some(addr), EndpointMode::Vip) = (s.vip, s.endpoint_mode) else {
                    continue;
                };
                out.push(Vip {
                    addr,
                    backends: s
                        .replicas
                        .iter()
                        .filter(|e| self.takes_traffic(p, e, subnet))
                        .map(|e| e.addr)
                        .collect(),
                });
            }
        }
        out
    }

    /// Every replica address of every map with each compose network its service is on, as
    /// (project, network, address).
    pub fn members(&self) -> Vec<(&str, &str, Ipv4Addr)> {
        let mut out = Vec::new();
        for (p, m) in &self.maps {
            for s in &m.services {
                for n in s.network_names() {
                    out.extend(s.replicas.iter().map(|e| (p.as_str(), n, e.addr)));
                }
            }
        }
        out
    }

    /// How many VIPs and replicas behind them this host balances over.
    pub fn counts(&self, subnet: Option<Ipv4Net>) -> (u32, u32) {
        let vips = self.vips(subnet);
        let endpoints = vips.iter().map(|v| v.backends.len()).sum::<usize>();
        (vips.len() as u32, endpoints as u32)
    }

    /// The addresses `name` has for pod `pod` of `project`; `None` when the name is none of the
    /// project's (the caller forwards it). `Some(empty)` is a known name with no address now.
    pub fn resolve(
        &mut self,
        project: &str,
        pod: &str,
        name: &str,
        subnet: Option<Ipv4Net>,
        rotate: bool,
    ) -> Option<Vec<Ipv4Addr>> {
        let map = self.maps.get(project)?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let base = name
            .strip_suffix(project)
            .and_then(|n| n.strip_suffix('.'))
            .unwrap_or(&name);
        if base.contains('.') {
            return None;
        }
        let mine: Vec<&str> = map
            .services
            .iter()
            .find(|s| s.replicas.iter().any(|e| e.pod == pod))
            .map(Service::network_names)
            .unwrap_or_else(|| vec![DEFAULT_NETWORK]);
        let shares = |s: &Service| s.network_names().iter().any(|n| mine.contains(n));
        let mut found: Option<(&Service, Option<u32>)> = None;
        for s in map.services.iter().filter(|s| shares(s)) {
            if s.name == base {
                found = Some((s, None));
                break;
            }
            if s.aliases
                .iter()
                .any(|a| a.name == base && mine.contains(&a.network.as_str()))
            {
                found = Some((s, None));
            }
            // `container_name` names the one container (compose allows it with one replica
            // only): its own address, as docker answers.
            if s.container_name.as_deref() == Some(base) {
                if let Some(e) = s.replicas.first() {
                    found = Some((s, Some(e.replica)));
                }
            }
            if let Some(r) = base
                .strip_prefix(s.name.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.parse::<u32>().ok())
            {
                if s.replicas.iter().any(|e| e.replica == r) {
                    found = Some((s, Some(r)));
                }
            }
        }
        let (s, replica) = found?;
        if let Some(r) = replica {
            return Some(
                s.replicas
                    .iter()
                    .filter(|e| e.replica == r)
                    .map(|e| e.addr)
                    .collect(),
            );
        }
        if let (EndpointMode::Vip, Some(vip)) = (s.endpoint_mode, s.vip) {
            return Some(vec![vip]);
        }
        let mut addrs: Vec<Ipv4Addr> = s
            .replicas
            .iter()
            .filter(|e| self.takes_traffic(project, e, subnet))
            .map(|e| e.addr)
            .collect();
        if rotate && !addrs.is_empty() {
            self.rotation = self.rotation.wrapping_add(1);
            let n = self.rotation % addrs.len();
            addrs.rotate_left(n);
        }
        Some(addrs)
    }
}

/// The host's pod network's side of services.
impl super::Network {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Our whole table: masquerade and published ports from `saved`, and the VIPs.
    pub(super) fn ruleset(
        &self,
        fleet: Ipv4Net,
        subnet: Ipv4Net,
        saved: &super::Saved,
    ) -> Result<super::nft::Ruleset, super::NetError> {
        let mut rules = super::ruleset(fleet, subnet, saved)?;
        let registry = self.registry();
        if !registry.maps.is_empty() {
            rules.vips = registry.vips(Some(subnet));
            rules.service_range = Some(crate::proto::service::default_service_cidr());
        }
        // The other hosts' pods join their networks as the maps say. This host knows its own
        // subnet better than any map: its pods are on the networks their `Apply` named, and an
        // address of it that no pod holds is on none (a map may be older than a pod's removal).
        for (project, network, addr) in registry.members() {
            if !subnet.contains(addr) {
                rules
                    .isolation
                    .networks
                    .entry(format!("{project}/{network}"))
                    .or_default()
                    .insert(addr);
            }
        }
        Ok(rules)
    }

    /// Rewrites our table if this host has pods (without pods there is no table, and no pod to
    /// connect to a VIP).
    fn resync(&self) -> Result<(), super::NetError> {
        let saved = self.lock();
        let Some(subnet) = saved.book.subnet else {
            return Ok(());
        };
        if saved.book.pods.is_empty() {
            return Ok(());
        }
        let fleet = saved.book.fleet.unwrap_or(subnet);
        let rules = self.ruleset(fleet, subnet, &saved)?;
        self.sync_rules(rules)
    }

    /// Takes `map` as the services of its project: saved, then the VIP rules rewritten. Returns
    /// the VIPs and replicas this host now balances over.
    pub fn set_services(
        &self,
        map: crate::proto::service::ServiceMap,
    ) -> Result<(u32, u32), super::NetError> {
        let file = self.file.with_file_name(super::SERVICES_FILE);
        {
            let mut registry = self.registry();
            registry
                .check(&map, crate::proto::service::default_service_cidr())
                .map_err(|e| super::NetError::Services(e.0))?;
            registry.set(map);
            let bytes = serde_json::to_vec_pretty(&*registry)
                .map_err(|e| super::NetError::State(file.clone(), std::io::Error::other(e)))?;
            crate::store::write_atomic(&file, &bytes, 0o600)
                .map_err(|e| super::NetError::State(file.clone(), e))?;
        }
        self.resync()?;
        // The subnet first: `self.registry().counts(self.subnet())` would lock the registry and
        // then the address book, the reverse of `attach`'s and `resync`'s order (book, then
        // registry) — a deadlock of both runtime threads when a service map arrived while a pod
        // was being attached (seen as a lab agent that answered nothing, every thread in futex).
        let subnet = self.subnet();
        Ok(self.registry().counts(subnet))
    }

    /// The map held for `project`, as `up` last pushed it.
    pub fn service_map_held(&self, project: &str) -> Option<crate::proto::service::ServiceMap> {
        self.registry().maps.get(project).cloned()
    }

    /// The digest of the map held for `project` (see `ServiceMap::digest`).
    pub fn service_map_digest(&self, project: &str) -> Option<String> {
        self.registry().maps.get(project).map(|m| m.digest())
    }

    /// The generation to pass to [`observed`](Self::observed) with an observation taken after
    /// this call.
    pub fn services_generation(&self) -> u64 {
        self.registry().generation()
    }

    /// This host's replicas that take traffic now (`project/pod`: running, and healthy when they
    /// have a healthcheck), observed at `generation`.
    pub fn observed(&self, up: BTreeSet<String>, generation: u64) -> Result<(), super::NetError> {
        if self.registry().observed(up, generation) {
            self.resync()?;
        }
        Ok(())
    }

    /// Takes `pods` of `project` out of the VIP sets and DNS answers; called before they stop.
    pub fn leaving(&self, project: &str, pods: &[String]) -> Result<(), super::NetError> {
        let subnet = self.subnet();
        if self.registry().leaving(project, pods, subnet) {
            self.resync()?;
        }
        Ok(())
    }

    /// The pod holding `addr` on this host, as (project, pod).
    pub fn pod_at(&self, addr: Ipv4Addr) -> Option<(String, String)> {
        let saved = self.lock();
        let (k, _) = saved.book.pods.iter().find(|(_, a)| **a == addr)?;
        let (project, pod) = k.split_once('/')?;
        Some((project.to_string(), pod.to_string()))
    }

    /// What `name` resolves to for the pod at `asker`; `None` when it is not a service name of
    /// the asking pod's project (or the asker is no pod of this host).
    /// `rotate`: turn a dnsrr name's order (an A query; other types only ask whether it exists).
    pub fn resolve(&self, asker: Ipv4Addr, name: &str, rotate: bool) -> Option<Vec<Ipv4Addr>> {
        let (project, pod) = self.pod_at(asker)?;
        let subnet = self.subnet();
        self.registry()
            .resolve(&project, &pod, name, subnet, rotate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::service::Alias;

    fn ep(pod: &str, replica: u32, addr: &str, healthy: bool) -> Endpoint {
        Endpoint {
            replica,
            pod: pod.into(),
            host: "h".into(),
            addr: addr.parse().unwrap(),
            healthy,
        }
    }

    fn svc(name: &str, mode: EndpointMode, vip: Option<&str>, nets: &[&str]) -> Service {
        Service {
            name: name.into(),
            endpoint_mode: mode,
            vip: vip.map(|v| v.parse().unwrap()),
            networks: nets.iter().map(|s| s.to_string()).collect(),
            aliases: vec![],
            container_name: None,
            replicas: vec![],
        }
    }

    fn registry() -> Registry {
        let mut api = svc("api", EndpointMode::Vip, Some("10.214.0.9"), &[]);
        api.replicas = vec![
            ep("api-1", 1, "10.213.2.2", true),
            ep("api-2", 2, "10.213.3.2", true),
            ep("api-3", 3, "10.213.1.5", true),
        ];
        api.aliases = vec![Alias {
            network: "default".into(),
            name: "backend".into(),
        }];
        let mut rr = svc("rr", EndpointMode::Dnsrr, None, &[]);
        rr.replicas = vec![
            ep("rr-1", 1, "10.213.2.3", true),
            ep("rr-2", 2, "10.213.3.3", true),
            ep("rr-3", 3, "10.213.3.4", false),
        ];
        let mut api2 = svc("solo", EndpointMode::Vip, Some("10.214.0.8"), &[]);
        api2.replicas = vec![ep("solo-1", 1, "10.213.2.8", true)];
        api2.container_name = Some("the-solo".into());
        let mut db = svc("db", EndpointMode::Vip, Some("10.214.0.7"), &["back"]);
        db.replicas = vec![ep("db-1", 1, "10.213.2.9", true)];
        db.container_name = Some("the-db".into());
        let mut client = svc("client", EndpointMode::Vip, Some("10.214.0.3"), &[]);
        client.replicas = vec![ep("client-1", 1, "10.213.1.2", true)];
        let mut r = Registry::default();
        r.set(ServiceMap {
            project: "p".into(),
            services: vec![api, rr, db, client, api2],
        });
        r
    }

    fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    const SUBNET: &str = "10.213.1.0/24";

    #[test]
    fn names_resolve_within_the_project_and_its_networks() {
        let mut r = registry();
        let sub = Some(SUBNET.parse().unwrap());
        let mut ask = |name: &str| r.resolve("p", "client-1", name, sub, true);
        assert_eq!(ask("api"), Some(ips(&["10.214.0.9"])));
        assert_eq!(ask("API.p."), Some(ips(&["10.214.0.9"])));
        assert_eq!(ask("backend"), Some(ips(&["10.214.0.9"])), "alias");
        assert_eq!(ask("api-2"), Some(ips(&["10.213.3.2"])), "a replica");
        assert_eq!(ask("api-9"), None);
        assert_eq!(
            ask("the-solo"),
            Some(ips(&["10.213.2.8"])),
            "container_name"
        );
        // db is on another network than the client: not visible, by any name.
        assert_eq!(ask("db"), None);
        assert_eq!(ask("the-db"), None);
        assert_eq!(ask("example.com"), None);
        assert_eq!(
            r.resolve("q", "client-1", "api", sub, true),
            None,
            "other project"
        );
    }

    #[test]
    fn dnsrr_rotates_over_healthy_replicas() {
        let mut r = registry();
        let sub = Some(SUBNET.parse().unwrap());
        let a = r.resolve("p", "client-1", "rr", sub, true).unwrap();
        let b = r.resolve("p", "client-1", "rr", sub, true).unwrap();
        assert_eq!(a.len(), 2, "the unhealthy replica is left out: {a:?}");
        assert_ne!(a[0], b[0], "rotating order");
    }

    #[test]
    fn a_local_replica_leaves_the_set_before_it_stops_and_stale_observations_are_ignored() {
        let mut r = registry();
        let sub = Some(SUBNET.parse().unwrap());
        let backends = |r: &Registry| {
            r.vips(sub)
                .into_iter()
                .find(|v| v.addr == "10.214.0.9".parse::<Ipv4Addr>().unwrap())
                .unwrap()
                .backends
        };
        assert_eq!(
            backends(&r).len(),
            3,
            "the pushed health before any observation"
        );
        let g = r.generation();
        assert!(r.leaving("p", &["api-3".into()], sub));
        assert_eq!(backends(&r), ips(&["10.213.2.2", "10.213.3.2"]));
        // An observation taken before `leaving` still shows api-3 up: ignored.
        let up: BTreeSet<String> = ["p/api-3".to_string()].into();
        assert!(!r.observed(up.clone(), g));
        assert_eq!(backends(&r).len(), 2);
        // A fresh one counts.
        assert!(r.observed(up, r.generation()));
        assert_eq!(backends(&r).len(), 3);
        // Remote replicas keep the pushed health whatever is observed here.
        assert!(r.observed(BTreeSet::new(), r.generation()));
        assert_eq!(backends(&r), ips(&["10.213.2.2", "10.213.3.2"]));
    }

    #[test]
    fn a_vip_taken_by_another_project_or_outside_the_range_is_refused() {
        let r = registry();
        let range: Ipv4Net = "10.214.0.0/16".parse().unwrap();
        let mut q = ServiceMap {
            project: "q".into(),
            services: vec![svc("web", EndpointMode::Vip, Some("10.214.0.9"), &[])],
        };
        let e = r.check(&q, range).unwrap_err();
        assert_eq!(e.0, "services p/api and q/web both have the VIP 10.214.0.9");
        q.services[0].vip = Some("10.9.0.1".parse().unwrap());
        assert!(r.check(&q, range).unwrap_err().0.contains("outside"));
        q.services[0].vip = Some("10.214.0.10".parse().unwrap());
        assert_eq!(r.check(&q, range), Ok(()));
    }
}
