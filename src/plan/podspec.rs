//! The pod specs of a placement: for every (pod, replica) of [`crate::pods`] that placement put on
//! a host, the [`PodSpec`] the agent runs there, as [`crate::deploy::desired::build`] takes it.
//! Pure: the project and the placement come in as values.
//!
//! A pod replica is named `<pod>-<replica>` (`web-1`) and holds replica `r` of every service of
//! the pod, in service-name order. What the protocol carries is taken from the compose model:
//! image, entrypoint, command, environment, user, working_dir, read_only, privileged,
//! capabilities, sysctls, ulimits, named volumes, bind mounts and tmpfs, resource limits,
//! healthcheck (compose's defaults filled in), restart policy, stop signal and grace period,
//! hostname, published ports, `network_mode: none` and the networks of the pod's root.
//!
//! Secrets and configs are carried by [`attach_files`], from contents the caller read (the core
//! reads no file): each becomes a [`FileDelivery`] (secrets 0400 — the agent writes them so —
//! at `/run/secrets/<name>`; configs at `/<name>`), and its content enters the spec hash as its
//! sha256, so a rotated secret replaces the pods that use it.
//!
//! What is not carried yet is said in [`PodSpecs::warnings`] rather than dropped silently:
//! external secrets and configs, mounts other than volumes, binds and tmpfs,
//! environment entries without a value (their value would come from the CLI's environment). A
//! bind mount's source (made absolute by the loader) is a path on the host, as with a remote
//! docker daemon.

use std::collections::BTreeMap;

use crate::compose::model::{Project, Service, Ulimit};
use crate::deploy::desired::PodInput;
use crate::pods::Pods;
use crate::proto::{
    ContainerSpec, FileDelivery, Healthcheck, Mount, NetworkMode, PodNetwork, PodSpec, PortMapping,
    ResourceLimits, RestartPolicy,
};
use crate::schedule::Placement;

/// Compose's healthcheck defaults (docker's): 30s interval and timeout, 3 retries, no start
/// period, 5s start interval.
const HEALTH_INTERVAL_MS: u64 = 30_000;
const HEALTH_TIMEOUT_MS: u64 = 30_000;
const HEALTH_RETRIES: u64 = 3;
const HEALTH_START_INTERVAL_MS: u64 = 5_000;

/// The pods to run, with what the specs could not carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodSpecs {
    /// One per placed (pod, replica), sorted by pod name.
    pub pods: Vec<PodInput>,
    /// One sentence each, naming the service: what was left out of its spec.
    pub warnings: Vec<String>,
}

/// The project cannot be turned into pods as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodSpecError {
    /// The user's file: a service that only has `build:` (exit 1).
    #[error("service `{0}` has only `build:` and has not been built yet; `compose-fleet build` (or `up`) builds it")]
    NoImage(String),
    /// Placement split one pod replica across hosts: a bug (exit 2).
    #[error("replica {replica} of pod `{pod}` was placed on both `{first}` and `{second}`")]
    Split {
        pod: String,
        replica: u32,
        first: String,
        second: String,
    },
}

/// The contents of the project's secrets and configs, by name, as the caller read them (from
/// `file:`, `environment:` or `content:`). Its `Debug` names them and never shows a byte.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FileContents {
    pub secrets: BTreeMap<String, Vec<u8>>,
    pub configs: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for FileContents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileContents")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("configs", &self.configs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Puts each container's secrets and configs into its spec, from `contents`. Returns a warning
/// per service for what has no content (an `external` one, which compose-fleet cannot fetch).
pub fn attach_files(specs: &mut PodSpecs, project: &Project, contents: &FileContents) {
    use base64::Engine;
    let mut warned = std::collections::BTreeSet::new();
    for pod in &mut specs.pods {
        for c in &mut pod.spec.containers {
            let Some(service) = project.services.get(&c.service) else {
                continue;
            };
            let refs = service
                .secrets
                .iter()
                .map(|r| (true, r))
                .chain(service.configs.iter().map(|r| (false, r)));
            for (secret, r) in refs {
                let content = if secret {
                    contents.secrets.get(&r.source)
                } else {
                    contents.configs.get(&r.source)
                };
                let kind = if secret { "secret" } else { "config" };
                let Some(content) = content else {
                    if warned.insert((c.service.clone(), kind, r.source.clone())) {
                        specs.warnings.push(format!(
                            "service `{}`: {kind} `{}` has no content compose-fleet can deliver (an `external` one, or not defined); the container runs without it",
                            c.service, r.source
                        ));
                    }
                    continue;
                };
                c.files.push(FileDelivery {
                    target: file_target(secret, &r.source, r.target.as_deref()),
                    content_b64: base64::engine::general_purpose::STANDARD.encode(content),
                    mode: r.mode.unwrap_or(if secret { 0o400 } else { 0o444 }),
                    secret,
                    uid: r.uid.as_deref().and_then(|u| u.parse().ok()),
                    gid: r.gid.as_deref().and_then(|g| g.parse().ok()),
                });
            }
        }
    }
}

/// Where a secret or config appears in the container: compose's defaults (`/run/secrets/<name>`,
/// `/<name>`), a relative secret target under `/run/secrets`.
fn file_target(secret: bool, source: &str, target: Option<&str>) -> String {
    match (secret, target) {
        (_, Some(t)) if t.starts_with('/') => t.to_string(),
        (true, Some(t)) => format!("/run/secrets/{t}"),
        (false, Some(t)) => format!("/{t}"),
        (true, None) => format!("/run/secrets/{source}"),
        (false, None) => format!("/{source}"),
    }
}

/// The pod name of `pod`'s replica `replica`.
pub fn pod_name(pod: &str, replica: u32) -> String {
    format!("{pod}-{replica}")
}

/// Builds the spec of every placed pod replica. `placement.assignments` name each replica's pod
/// (`pods` says which services form it).
pub fn build(
    project: &Project,
    pods: &Pods,
    placement: &Placement,
) -> Result<PodSpecs, PodSpecError> {
    // (pod, replica) → host and its services' replicas.
    let mut groups: BTreeMap<(String, u32), (String, Vec<String>)> = BTreeMap::new();
    // Expanded one replica at a time: a pod spec is per replica, and what is sent to a host is
    // bounded by the replica limits anyway.
    for a in placement.replicas() {
        let key = (a.pod.to_string(), a.replica);
        match groups.get_mut(&key) {
            Some((host, services)) => {
                if host != a.host {
                    return Err(PodSpecError::Split {
                        pod: a.pod.to_string(),
                        replica: a.replica,
                        first: host.clone(),
                        second: a.host.to_string(),
                    });
                }
                services.push(a.service.to_string());
            }
            None => {
                groups.insert(key, (a.host.to_string(), vec![a.service.to_string()]));
            }
        }
    }
    let mut out = PodSpecs::default();
    let mut warned: BTreeMap<String, ()> = BTreeMap::new();
    for ((pod, replica), (host, mut services)) in groups {
        services.sort();
        let root = pods
            .pod_of(&pod)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| pod.clone());
        let root_service = project.services.get(&root);
        let name = pod_name(&pod, replica);
        let mut containers = Vec::new();
        let mut ports = Vec::new();
        for s in &services {
            let Some(service) = project.services.get(s) else {
                continue;
            };
            let (spec, warnings) = container(project, service, replica)?;
            // Warn once per service, not once per replica.
            if warned.insert(s.clone(), ()).is_none() {
                out.warnings.extend(warnings);
            }
            containers.push(spec);
            ports.extend(port_mappings(service));
        }
        let hostname = root_service
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone());
        let networks: Vec<String> = root_service
            .map(|s| s.networks.keys().cloned().collect())
            .unwrap_or_default();
        let mode = match root_service.and_then(|s| s.network_mode.as_deref()) {
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            _ => NetworkMode::Fleet,
        };
        out.pods.push(PodInput {
            host,
            spec: PodSpec {
                name: name.clone(),
                hostname,
                spec_hash: String::new(),
                containers,
                ports,
                network: PodNetwork {
                    mode,
                    internal: internal_networks(project, &networks),
                    networks: networks.clone(),
                },
            },
            networks,
        });
    }
    out.pods.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(out)
}

/// Those of `networks` (the project's default network when empty) that are `internal: true`.
fn internal_networks(project: &Project, networks: &[String]) -> Vec<String> {
    let default = [crate::proto::service::DEFAULT_NETWORK.to_string()];
    let names = if networks.is_empty() {
        &default[..]
    } else {
        networks
    };
    names
        .iter()
        .filter(|n| project.networks.get(*n).is_some_and(|net| net.internal))
        .cloned()
        .collect()
}

/// One service's container of replica `replica`, and what its spec leaves out.
fn container(
    project: &Project,
    s: &Service,
    replica: u32,
) -> Result<(ContainerSpec, Vec<String>), PodSpecError> {
    let image = s
        .image
        .clone()
        .ok_or_else(|| PodSpecError::NoImage(s.name.clone()))?;
    let mut warnings = Vec::new();
    let mut env = BTreeMap::new();
    let mut unset = Vec::new();
    for (k, v) in &s.environment {
        match v {
            Some(v) => {
                env.insert(k.clone(), v.clone());
            }
            None => unset.push(k.as_str()),
        }
    }
    if !unset.is_empty() {
        warnings.push(format!(
            "service `{}`: environment {} without a value {} not passed (set a value in the compose file)",
            s.name,
            unset.join(", "),
            if unset.len() == 1 { "is" } else { "are" }
        ));
    }
    let mut mounts = Vec::new();
    for (i, v) in s.volumes.iter().enumerate() {
        match (v.kind.as_str(), v.source.as_deref()) {
            ("volume", Some(source)) => {
                let name = project
                    .volumes
                    .get(source)
                    .and_then(|vol| vol.name.clone())
                    .unwrap_or_else(|| source.to_string());
                mounts.push(Mount::Volume {
                    name,
                    target: v.target.clone(),
                    read_only: v.read_only,
                });
            }
            // An anonymous volume: one per replica, kept across replacements like a named one.
            ("volume", None) => mounts.push(Mount::Volume {
                name: format!("{}-{replica}-anon{i}", s.name),
                target: v.target.clone(),
                read_only: v.read_only,
            }),
            ("bind", Some(source)) => mounts.push(Mount::Bind {
                source: source.to_string(),
                target: v.target.clone(),
                read_only: v.read_only,
            }),
            ("tmpfs", _) => mounts.push(Mount::Tmpfs {
                target: v.target.clone(),
                size: v
                    .extra
                    .get("tmpfs")
                    .and_then(|t| t.get("size"))
                    .and_then(serde_json::Value::as_u64),
            }),
            (kind, source) => warnings.push(format!(
                "service `{}`: the {kind} mount {}:{} is left out (only volumes, bind mounts and \
                 tmpfs are mounted on hosts)",
                s.name,
                source.unwrap_or("-"),
                v.target
            )),
        }
    }
    for t in &s.tmpfs {
        let target = t.split(':').next().unwrap_or(t);
        mounts.push(Mount::Tmpfs {
            target: target.to_string(),
            size: None,
        });
    }
    let limits = s.deploy.as_ref().and_then(|d| d.resources.limits.as_ref());
    let resources = ResourceLimits {
        memory: limits.and_then(|l| l.memory).or(s.mem_limit).map(|b| b.0),
        cpus: limits.and_then(|l| l.cpus).or(s.cpus),
        pids: limits.and_then(|l| l.pids).or(s.pids_limit),
    };
    let healthcheck = s.healthcheck.as_ref().map(|h| Healthcheck {
        test: if h.disable {
            vec!["NONE".to_string()]
        } else {
            h.test.clone()
        },
        interval_ms: h
            .interval
            .map_or(HEALTH_INTERVAL_MS, |d| d.0.as_millis() as u64),
        timeout_ms: h
            .timeout
            .map_or(HEALTH_TIMEOUT_MS, |d| d.0.as_millis() as u64),
        retries: h.retries.unwrap_or(HEALTH_RETRIES),
        start_period_ms: h.start_period.map_or(0, |d| d.0.as_millis() as u64),
        start_interval_ms: h
            .start_interval
            .map_or(HEALTH_START_INTERVAL_MS, |d| d.0.as_millis() as u64),
    });
    let ulimits = s
        .ulimits
        .iter()
        .map(|(k, u)| {
            let pair = match u {
                Ulimit::Single(n) => (*n, *n),
                Ulimit::Range { soft, hard } => (*soft, *hard),
            };
            (k.clone(), pair)
        })
        .collect();
    let spec = ContainerSpec {
        service: s.name.clone(),
        replica,
        image,
        entrypoint: s.entrypoint.clone(),
        command: s.command.clone(),
        env,
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        read_only: s.read_only,
        privileged: s.privileged,
        cap_add: s.cap_add.clone(),
        cap_drop: s.cap_drop.clone(),
        sysctls: s.sysctls.clone(),
        ulimits,
        mounts,
        files: Vec::new(),
        resources,
        healthcheck,
        restart: restart_policy(s),
        stop_signal: s.stop_signal.clone(),
        stop_grace_period_ms: s.stop_grace_period.map(|d| d.0.as_millis() as u64),
    };
    Ok((spec, warnings))
}

/// `restart:` as docker compose reads it, else swarm's `deploy.restart_policy`, else `no`.
fn restart_policy(s: &Service) -> RestartPolicy {
    if let Some(r) = s.restart.as_deref() {
        return match r {
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            r if r.starts_with("on-failure") => RestartPolicy::OnFailure {
                max_retries: r.split_once(':').and_then(|(_, n)| n.parse().ok()),
            },
            _ => RestartPolicy::No,
        };
    }
    let policy = s.deploy.as_ref().and_then(|d| d.restart_policy.as_ref());
    match policy.and_then(|p| p.condition.as_deref()) {
        Some("none") => RestartPolicy::No,
        Some("on-failure") => RestartPolicy::OnFailure {
            max_retries: policy
                .and_then(|p| p.max_attempts)
                .and_then(|n| u32::try_from(n).ok()),
        },
        Some(_) => RestartPolicy::Always,
        None => RestartPolicy::No,
    }
}

/// The published ports of a service: each published port of a range maps to the same target.
fn port_mappings(s: &Service) -> Vec<PortMapping> {
    let mut out = Vec::new();
    for p in &s.ports {
        let protocol = if p.protocol.is_empty() {
            "tcp".to_string()
        } else {
            p.protocol.to_ascii_lowercase()
        };
        let host_ip = p
            .host_ip
            .clone()
            .filter(|ip| !ip.is_empty() && ip != "0.0.0.0" && ip != "::");
        for published in p.published_ports() {
            out.push(PortMapping {
                host_ip: host_ip.clone(),
                published,
                target: p.target,
                protocol: protocol.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{self, Environment, LoadOptions};
    use crate::schedule::Assignment;

    fn load(yaml: &str) -> Project {
        let fs = compose::MemoryFs::new().with("/p/compose.yaml", yaml);
        let mut opts = LoadOptions::for_file("/p/compose.yaml");
        opts.project_name = Some("t".into());
        compose::load(&opts, &Environment::new(), &fs)
            .expect("loads")
            .project
    }

    fn at(service: &str, replica: u32, host: &str, pod: &str) -> Assignment {
        Assignment::one(service, replica, host, pod)
    }

    #[test]
    fn one_pod_per_replica_with_the_services_settings() {
        let project = load(
            r#"
services:
  web:
    image: reg/httpd:1
    entrypoint: ["httpd"]
    command: ["-f", "-p", "80"]
    environment: { A: "1", B: "two" }
    working_dir: /www
    user: "1000"
    ports: ["8080:80"]
    restart: on-failure:3
    stop_signal: SIGINT
    stop_grace_period: 3s
    volumes: ["data:/data:ro", "/srv:/srv", { type: npipe, source: x, target: /p }]
    tmpfs: ["/run:size=1m"]
    healthcheck: { test: ["CMD", "true"], interval: 2s }
    deploy: { replicas: 2, resources: { limits: { cpus: "0.5", memory: 64m, pids: 50 } } }
volumes: { data: {} }
"#,
        );
        let pods = crate::pods::of(&project);
        let placement = Placement {
            assignments: vec![at("web", 1, "h1", "web"), at("web", 2, "h2", "web")],
            ..Placement::default()
        };
        let out = build(&project, &pods, &placement).expect("builds");
        assert_eq!(out.pods.len(), 2);
        let p = &out.pods[1];
        assert_eq!((p.host.as_str(), p.spec.name.as_str()), ("h2", "web-2"));
        assert_eq!(p.spec.hostname, "web-2");
        let c = &p.spec.containers[0];
        assert_eq!(c.replica, 2);
        assert_eq!(c.image, "reg/httpd:1");
        assert_eq!(c.entrypoint.as_deref(), Some(&["httpd".to_string()][..]));
        assert_eq!(c.command.as_ref().map(Vec::len), Some(3));
        assert_eq!(c.env.get("B").map(String::as_str), Some("two"));
        assert_eq!(c.working_dir.as_deref(), Some("/www"));
        assert_eq!(c.user.as_deref(), Some("1000"));
        assert_eq!(
            c.restart,
            RestartPolicy::OnFailure {
                max_retries: Some(3)
            }
        );
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.stop_grace_period_ms, Some(3000));
        assert_eq!(c.resources.memory, Some(64 << 20));
        assert_eq!(c.resources.cpus, Some(0.5));
        assert_eq!(c.resources.pids, Some(50));
        let h = c.healthcheck.as_ref().expect("healthcheck");
        assert_eq!((h.interval_ms, h.timeout_ms, h.retries), (2000, 30_000, 3));
        assert_eq!(
            c.mounts,
            vec![
                Mount::Volume {
                    name: "data".into(),
                    target: "/data".into(),
                    read_only: true
                },
                Mount::Bind {
                    source: "/srv".into(),
                    target: "/srv".into(),
                    read_only: false
                },
                Mount::Tmpfs {
                    target: "/run".into(),
                    size: None
                },
            ]
        );
        assert_eq!(
            p.spec.ports,
            vec![PortMapping {
                host_ip: None,
                published: 8080,
                target: 80,
                protocol: "tcp".into()
            }]
        );
        // The named pipe cannot be mounted on a Linux host: said, not silently dropped.
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert!(out.warnings[0].contains("npipe"), "{:?}", out.warnings);
    }

    #[test]
    fn secrets_and_configs_are_delivered_as_files_and_their_content_is_in_the_hash() {
        let project = load(
            r#"
services:
  app:
    image: a
    secrets: [db, { source: api, target: key, mode: 0440 }, ext]
    configs: [{ source: conf, target: /etc/app.conf }]
secrets:
  db: { content: unused }
  api: { content: unused }
  ext: { external: true }
configs:
  conf: { content: unused }
"#,
        );
        let pods = crate::pods::of(&project);
        let placement = Placement {
            assignments: vec![at("app", 1, "h1", "app")],
            ..Placement::default()
        };
        let contents = |db: &str| FileContents {
            secrets: [("db", db), ("api", "k")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            configs: [("conf".to_string(), b"x=1".to_vec())]
                .into_iter()
                .collect(),
        };
        let build_with = |c: &FileContents| {
            let mut out = build(&project, &pods, &placement).expect("builds");
            attach_files(&mut out, &project, c);
            out
        };
        let out = build_with(&contents("hunter2"));
        let files = &out.pods[0].spec.containers[0].files;
        let seen: Vec<(&str, u32, bool)> = files
            .iter()
            .map(|f| (f.target.as_str(), f.mode, f.secret))
            .collect();
        assert_eq!(
            seen,
            [
                ("/run/secrets/db", 0o400, true),
                ("/run/secrets/key", 0o440, true),
                ("/etc/app.conf", 0o444, false)
            ]
        );
        assert_eq!(files[0].content_b64, "aHVudGVyMg==");
        // The external one is said, not silently dropped; no content is in any message.
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert!(out.warnings[0].contains("`ext`"), "{:?}", out.warnings);
        assert!(!format!("{:?} {:?}", contents("hunter2"), out.warnings).contains("hunter2"));
        // A rotated secret changes the spec hash (its sha256 is hashed, never the content).
        let hash = |o: &PodSpecs| {
            crate::deploy::desired::spec_hash(&o.pods[0].spec, &BTreeMap::new(), &[])
        };
        let rotated = build_with(&contents("hunter3"));
        assert_ne!(hash(&out), hash(&rotated));
        assert_eq!(hash(&out), hash(&build_with(&contents("hunter2"))));
        let canonical = crate::deploy::desired::canonical(&out.pods[0].spec, &BTreeMap::new(), &[]);
        assert!(!canonical.contains("aHVudGVyMg=="), "{canonical}");
    }

    #[test]
    fn pods_carry_their_networks_internal_ones_and_network_mode() {
        let project = load(
            r#"
services:
  vault: { image: a, networks: [sealed, front] }
  locked: { image: a, networks: [sealed] }
  plain: { image: a }
  none: { image: a, network_mode: none }
  host: { image: a, network_mode: host }
networks:
  sealed: { internal: true }
  front: {}
"#,
        );
        let pods = crate::pods::of(&project);
        let names = ["vault", "locked", "plain", "none", "host"];
        let placement = Placement {
            assignments: names.iter().map(|n| at(n, 1, "h1", n)).collect(),
            ..Placement::default()
        };
        let out = build(&project, &pods, &placement).expect("builds");
        let net = |pod: &str| {
            out.pods
                .iter()
                .find(|p| p.spec.name == format!("{pod}-1"))
                .map(|p| p.spec.network.clone())
                .expect("the pod")
        };
        assert_eq!(net("vault").networks, ["front", "sealed"]);
        assert_eq!(net("vault").internal, ["sealed"]);
        assert_eq!(net("locked").internal, ["sealed"]);
        assert!(net("plain").internal.is_empty());
        assert_eq!(net("plain").mode, NetworkMode::Fleet);
        assert_eq!(net("none").mode, NetworkMode::None);
        assert_eq!(net("host").mode, NetworkMode::Host);
    }

    #[test]
    fn a_shared_network_namespace_is_one_pod_of_both_services() {
        let project = load(
            r#"
services:
  app: { image: a }
  sidecar: { image: b, network_mode: "service:app", restart: always }
"#,
        );
        let pods = crate::pods::of(&project);
        let placement = Placement {
            assignments: vec![at("app", 1, "h1", "app"), at("sidecar", 1, "h1", "app")],
            ..Placement::default()
        };
        let out = build(&project, &pods, &placement).expect("builds");
        assert_eq!(out.pods.len(), 1);
        let services: Vec<&str> = out.pods[0]
            .spec
            .containers
            .iter()
            .map(|c| c.service.as_str())
            .collect();
        assert_eq!(services, ["app", "sidecar"]);
        assert_eq!(
            out.pods[0].spec.containers[1].restart,
            RestartPolicy::Always
        );
        // Split across hosts: placement broke its promise.
        let split = Placement {
            assignments: vec![at("app", 1, "h1", "app"), at("sidecar", 1, "h2", "app")],
            ..Placement::default()
        };
        assert!(matches!(
            build(&project, &pods, &split),
            Err(PodSpecError::Split { .. })
        ));
    }

    #[test]
    fn the_specs_hash_the_same_twice_and_differ_by_environment() {
        let yaml = |v: &str| {
            format!("services:\n  web: {{ image: a, environment: {{ X: \"{v}\" }} }}\n  db: {{ image: b }}\n")
        };
        let hashes = |v: &str| {
            let project = load(&yaml(v));
            let pods = crate::pods::of(&project);
            let placement = Placement {
                assignments: vec![at("db", 1, "h1", "db"), at("web", 1, "h1", "web")],
                ..Placement::default()
            };
            let out = build(&project, &pods, &placement).expect("builds");
            let managed = ["db", "web"].iter().map(|s| s.to_string()).collect();
            let d = crate::deploy::desired::build(
                out.pods,
                &BTreeMap::new(),
                managed,
                Default::default(),
            )
            .expect("desired");
            d.pods()
                .map(|p| (p.name.clone(), p.spec_hash.clone()))
                .collect::<Vec<_>>()
        };
        let a = hashes("1");
        assert_eq!(a, hashes("1"));
        let b = hashes("2");
        assert_eq!(a[0], b[0], "db is unchanged");
        assert_ne!(a[1], b[1], "web's environment changed");
    }

    #[test]
    fn a_service_without_an_image_is_refused() {
        let project = load("services:\n  web: { build: . }\n");
        let pods = crate::pods::of(&project);
        let placement = Placement {
            assignments: vec![at("web", 1, "h1", "web")],
            ..Placement::default()
        };
        assert_eq!(
            build(&project, &pods, &placement),
            Err(PodSpecError::NoImage("web".into()))
        );
    }
}
