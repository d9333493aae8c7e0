//! The fleet-wide service map `up` pushes to every agent after a deploy (`Request::Services`):
//! each service of the project with its VIP (stable, from the service range), endpoint mode,
//! networks, aliases, `container_name`, and every replica's address and health as the hosts
//! report them. Building it is pure ([`service_map`]); [`push`] sends it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::compose::model::Project;
use crate::proto::service::{
    assign_vips, default_service_cidr, Alias, Endpoint, EndpointMode, Service, ServiceMap,
};
use crate::proto::{PodStatus, Request, Response};

use super::exec::HostConn;

/// The map of `project` from what each host reports (`pods`: host → its pods of the project).
pub fn service_map(project: &Project, pods: &BTreeMap<String, Vec<PodStatus>>) -> ServiceMap {
    let names: BTreeSet<String> = project
        .services
        .keys()
        .map(|s| format!("{}/{s}", project.name))
        .collect();
    let vips = assign_vips(default_service_cidr(), &names).unwrap_or_default();
    let mut endpoints: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    let serves = |c: &crate::proto::ContainerStatus| {
        c.state == "running" && !matches!(c.health.as_deref(), Some("unhealthy" | "starting"))
    };
    for (host, statuses) in pods {
        for pod in statuses {
            // A start-first replacement's outgoing generation serves until the new one does;
            // from then on the map leaves it out, so every host stops sending it connections
            // before it is retired (stopped).
            let outgoing = pod
                .outgoing
                .as_deref()
                .filter(|_| !pod.containers.iter().all(serves));
            for generation in std::iter::once(pod).chain(outgoing) {
                let Some(addr) = generation.ip.as_deref().and_then(|ip| ip.parse().ok()) else {
                    continue;
                };
                for c in &generation.containers {
                    endpoints.entry(&c.service).or_default().push(Endpoint {
                        replica: c.replica,
                        pod: generation.instance().to_string(),
                        host: host.clone(),
                        addr,
                        healthy: serves(c),
                    });
                }
            }
        }
    }
    let services = project
        .services
        .iter()
        .map(|(name, svc)| {
            let dnsrr = svc
                .deploy
                .as_ref()
                .and_then(|d| d.extra.get("endpoint_mode"))
                .and_then(|m| m.as_str())
                == Some("dnsrr");
            let endpoint_mode = if dnsrr {
                EndpointMode::Dnsrr
            } else {
                EndpointMode::Vip
            };
            let mut replicas = endpoints.remove(name.as_str()).unwrap_or_default();
            replicas.sort_by_key(|e| e.replica);
            Service {
                name: name.clone(),
                endpoint_mode,
                vip: match endpoint_mode {
                    EndpointMode::Vip => vips.get(&format!("{}/{name}", project.name)).copied(),
                    EndpointMode::Dnsrr => None,
                },
                // A sidecar (`network_mode: service:X`) lives in X's pod: X's networks are its.
                networks: svc
                    .network_mode_service()
                    .and_then(|x| project.services.get(x))
                    .unwrap_or(svc)
                    .networks
                    .keys()
                    .cloned()
                    .collect(),
                aliases: svc
                    .networks
                    .iter()
                    .flat_map(|(net, opts)| {
                        opts.iter().flat_map(move |o| {
                            o.aliases.iter().map(move |a| Alias {
                                network: net.clone(),
                                name: a.clone(),
                            })
                        })
                    })
                    .collect(),
                container_name: svc.container_name.clone(),
                replicas,
            }
        })
        .collect();
    ServiceMap {
        project: project.name.clone(),
        services,
    }
}

/// After a deploy that changed pods: asks every host (in parallel) what it runs of `project`,
/// builds the map and pushes it to every host whose map differs (`held`: host → the digest of
/// the map it reported). Returns warnings (a host that did not answer or did not take the map).
pub async fn publish(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &Project,
    held: &BTreeMap<String, String>,
    timeout: Duration,
) -> Vec<String> {
    publish_keeping(hosts, project, held, &BTreeMap::new(), timeout).await
}

/// [`publish`], with the pods of hosts that did not answer as last recorded (`kept`, by host):
/// `up --on-unreachable skip` keeps them in the map (unhealthy: not answered for), so that the
/// next `up` still knows what runs there.
pub async fn publish_keeping(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &Project,
    held: &BTreeMap<String, String>,
    kept: &BTreeMap<String, Vec<PodStatus>>,
    timeout: Duration,
) -> Vec<String> {
    let mut pods = BTreeMap::new();
    let mut held = held.clone();
    let mut warnings = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for (name, conn) in hosts {
        let (name, conn, project) = (name.clone(), conn.clone(), project.name.clone());
        set.spawn(async move {
            let got = conn.status_report(&project, timeout).await;
            (name, got)
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((name, Ok(report))) => {
                match report.service_map {
                    Some(d) => held.insert(name.clone(), d),
                    None => held.remove(&name),
                };
                pods.insert(name, report.pods);
            }
            Ok((name, Err(e))) => warnings.push(format!(
                "{name}'s replicas are left out of the service map: {e}"
            )),
            Err(e) => warnings.push(format!("a status task failed: {e}")),
        }
    }
    for (host, statuses) in kept {
        pods.entry(host.clone()).or_insert_with(|| statuses.clone());
    }
    warnings.extend(publish_observed(hosts, project, &pods, &held, timeout).await);
    warnings
}

/// Pushes the map built from `pods` (what the hosts reported) to every host that does not hold
/// it already (`held`): after a no-op `up`, usually none, so it costs no request.
pub async fn publish_observed(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &Project,
    pods: &BTreeMap<String, Vec<PodStatus>>,
    held: &BTreeMap<String, String>,
    timeout: Duration,
) -> Vec<String> {
    let map = service_map(project, pods);
    let digest = map.digest();
    let stale: BTreeMap<String, Arc<HostConn>> = hosts
        .iter()
        .filter(|(name, _)| held.get(*name) != Some(&digest))
        .map(|(name, conn)| (name.clone(), conn.clone()))
        .collect();
    push(&stale, &map, timeout).await
}

/// Sends `map` to every host; returns one warning per host that did not take it (its pods then
/// resolve names from the map it had).
pub async fn push(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    map: &ServiceMap,
    timeout: Duration,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // One call per host, all at once: each host has its own channel.
    let mut set = tokio::task::JoinSet::new();
    for (name, conn) in hosts {
        let (name, conn, map) = (name.clone(), conn.clone(), map.clone());
        set.spawn(async move {
            match conn.call(Request::Services(map), timeout).await {
                Ok(Response::Services { .. }) => None,
                Ok(other) => Some(format!(
                    "{name}: the agent answered the service map with {other:?}"
                )),
                Err(e) => Some(format!(
                    "{name} did not take the service map (its pods resolve service names from the last one it had): {e}"
                )),
            }
        });
    }
    while let Some(r) = set.join_next().await {
        warnings.extend(r.ok().flatten());
    }
    warnings.sort();
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ContainerStatus;

    fn project() -> Project {
        let yaml = r#"
name: shop
services:
  api:
    image: x
    deploy: { replicas: 2 }
    networks:
      default:
        aliases: [backend]
  db:
    image: x
    container_name: the-db
    deploy: { endpoint_mode: dnsrr }
    networks: [back]
  metrics:
    image: x
    network_mode: service:db
networks:
  back: {}
"#;
        let fs = crate::compose::MemoryFs::new().with("/p/compose.yaml", yaml);
        let opts = crate::compose::LoadOptions::for_file("/p/compose.yaml");
        crate::compose::load(&opts, &crate::compose::Environment::new(), &fs)
            .expect("loads")
            .project
    }

    fn pod(name: &str, service: &str, replica: u32, ip: &str, health: Option<&str>) -> PodStatus {
        PodStatus {
            project: "shop".into(),
            name: name.into(),
            spec_hash: "h".into(),
            ip: Some(ip.into()),
            instance: None,
            outgoing: None,
            containers: vec![ContainerStatus {
                service: service.into(),
                replica,
                state: "running".into(),
                health: health.map(String::from),
                pid: None,
                exit_code: None,
                restarts: 0,
                started_at: None,
                stopped: false,
            }],
        }
    }

    #[test]
    fn the_map_has_vips_modes_aliases_and_replicas_with_their_health() {
        let pods = BTreeMap::from([
            (
                "h2".to_string(),
                vec![pod("api-1", "api", 1, "10.213.2.2", None)],
            ),
            (
                "h3".to_string(),
                vec![
                    pod("api-2", "api", 2, "10.213.3.2", Some("unhealthy")),
                    pod("db-1", "db", 1, "10.213.3.3", Some("healthy")),
                ],
            ),
        ]);
        let map = service_map(&project(), &pods);
        assert_eq!(map.project, "shop");
        let api = &map.services[0];
        assert_eq!(api.name, "api");
        assert_eq!(api.endpoint_mode, EndpointMode::Vip);
        assert!(default_service_cidr().contains(api.vip.expect("a VIP")));
        assert_eq!(api.aliases[0].name, "backend");
        let health: Vec<(&str, bool)> = api
            .replicas
            .iter()
            .map(|e| (e.pod.as_str(), e.healthy))
            .collect();
        assert_eq!(health, [("api-1", true), ("api-2", false)]);
        let db = &map.services[1];
        assert_eq!((db.endpoint_mode, db.vip), (EndpointMode::Dnsrr, None));
        assert_eq!(db.container_name.as_deref(), Some("the-db"));
        // The sidecar is on its pod's networks (not on the default one it names none of).
        assert_eq!(map.services[2].name, "metrics");
        assert_eq!(map.services[2].networks, ["back"]);
        // The same project gives the same VIPs on any machine.
        assert_eq!(service_map(&project(), &pods), map);
    }
}
