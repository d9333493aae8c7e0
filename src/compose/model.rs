//! The normalized compose project: what `compose::load` returns and everything downstream reads.
//!
//! Every short syntax has been expanded to its long form, every size is in bytes, every duration is
//! a [`Duration`], interpolation and merging are done; legacy keys are also folded into `deploy`.
//! Serializing a [`Project`] gives this model with the Compose Specification's field names; the
//! form `docker compose config` prints is built from it by [`super::canonical`]. Source positions
//! are kept beside the values (never serialized) so that later stages (graph, schedule) can point
//! at the user's text.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A position in a source file: what diagnostics print as `file:line:column` (1-based).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Location {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
    /// Byte offset of the start of the marked text in the file, and its length: for the caret.
    pub offset: usize,
    pub len: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A whole project after loading: the services that are enabled by the active profiles, and the
/// top-level resources they use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Project {
    pub name: String,
    pub services: BTreeMap<String, Service>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileObject>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileObject>,
    /// Top-level `x-*` extension fields, kept verbatim.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
    /// Top-level `models`, as written (the fleet does not provision them): compose's YAML
    /// prints those an enabled service uses, its JSON none.
    #[serde(skip)]
    pub models: BTreeMap<String, serde_json::Value>,
    /// Services defined but disabled because none of their profiles is active.
    #[serde(skip)]
    pub disabled: BTreeMap<String, Service>,
    /// Errors for what docker compose accepts but the fleet cannot run (`network_mode:
    /// container:…`, `provider`): `config` prints them as warnings, placement refuses the project.
    #[serde(skip)]
    pub unrunnable: Vec<crate::diag::Diagnostic>,
}

/// One service after normalization. Field names are the Compose Specification's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Service {
    #[serde(skip)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `environment` merged with `env_file`s; `None` means "taken from the CLI's environment at run
    /// time" (a list entry without `=` whose variable is unset when loading).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// `restart`: `no`, `always`, `on-failure[:N]`, `unless-stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Networks the service attaches to; `None` value = attached with no options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<ServiceNetwork>>,
    /// `network_mode`; `service:X` makes this service share X's pod (network namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Legacy `mem_limit` (bytes), kept as written; `deploy.resources` is the normalized view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// `shm_size` in bytes (compose prints it as a string of bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Bytes>,
    /// Every other key the spec allows (and `x-*` fields), kept verbatim so that nothing is dropped;
    /// the fidelity ledger says which of these compose-fleet honours.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Where things were written, for diagnostics of later stages.
    #[serde(skip)]
    pub spans: ServiceSpans,
    /// Which `deploy` values normalization folded in from legacy keys (the user did not write
    /// them there): the canonical form prints them where they were written
    /// ([`super::canonical`]). All false for a service built in code.
    #[serde(skip)]
    pub folded: Folded,
}

/// The `deploy` values that normalization took from the legacy keys `mem_limit`, `cpus`,
/// `pids_limit` and `mem_reservation` (and `deploy` itself, when only they made it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Folded {
    pub deploy: bool,
    pub limits_memory: bool,
    pub limits_cpus: bool,
    pub limits_pids: bool,
    pub reservations_memory: bool,
}

/// The one parser of a reference to another service by `service:NAME`, as `network_mode`, `ipc`
/// and `pid` write it: `service:db` → `db`. Anything else (`host`, `container:x`, a bare name) is
/// not a service reference.
pub fn service_ref(value: &str) -> Option<&str> {
    value.strip_prefix("service:")
}

/// The service a `volumes_from` entry names: `db`, `db:ro` → `db`; `container:x` names a
/// container outside the project, not a service. As in compose, the first field is the service:
/// `service:db` names a service called `service` (which compose then rejects as undefined).
pub fn volumes_from_service(entry: &str) -> Option<&str> {
    if entry.starts_with("container:") {
        return None;
    }
    Some(entry.split(':').next().unwrap_or(entry))
}

/// The service a `links` entry names: `db` or `db:alias` → `db`.
pub fn link_service(entry: &str) -> &str {
    entry.split(':').next().unwrap_or(entry)
}

impl Service {
    /// `network_mode: service:X` → `X`: the service whose network namespace this one joins.
    pub fn network_mode_service(&self) -> Option<&str> {
        self.network_mode.as_deref().and_then(service_ref)
    }
}

/// Source positions of a service's parts that later stages report on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceSpans {
    /// The service's key under `services:`.
    pub name: Location,
    /// Each dependency edge (`depends_on`, `links`, `volumes_from`, `network_mode: service:X`),
    /// keyed by the service depended upon.
    pub dependencies: BTreeMap<String, Location>,
    /// Each published port, in the order of `ports`.
    pub ports: Vec<Location>,
    /// `deploy.placement.constraints` entries, in order.
    pub constraints: Vec<Location>,
    /// Each entry of `volumes`, in order.
    pub volumes: Vec<Location>,
    /// Each network the service joins, by name.
    pub networks: BTreeMap<String, Location>,
    /// The replica count's value (`deploy.replicas`, else `scale`), when written.
    pub replicas: Option<Location>,
    /// The value of `container_name`, when written.
    pub container_name: Option<Location>,
    /// The values of `image` and `build`, when written (even when they were not valid).
    pub image: Option<Location>,
    pub build: Option<Location>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Build {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A port in long syntax. `published` is a string because it may be a range (`8000-8010`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Port {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ingress` (default) or `host`.
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub target: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// `tcp` or `udp` (or `sctp`).
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl Port {
    /// The published host ports, expanded from a range; empty when nothing is published.
    pub fn published_ports(&self) -> Vec<u16> {
        let Some(p) = &self.published else {
            return Vec::new();
        };
        match p.split_once('-') {
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) if a <= b => (a..=b).collect(),
                _ => Vec::new(),
            },
            None => p.parse::<u16>().map(|p| vec![p]).unwrap_or_default(),
        }
    }
}

/// A mount in long syntax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceVolume {
    /// `volume`, `bind`, `tmpfs`, `npipe`, `cluster`, `image`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub condition: Condition,
    pub required: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`; a string test is `CMD-SHELL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Deploy {
    /// `replicated` (default) or `global`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceAmounts>,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.limits.is_none() && self.reservations.is_none() && self.extensions.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceAmounts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
            && self.preferences.is_empty()
            && self.max_replicas_per_node.is_none()
            && self.extensions.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlacementPreference {
    /// e.g. `node.labels.zone`.
    pub spread: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RestartPolicy {
    /// `none`, `on-failure`, `any`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UpdateConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
    /// Zero durations and ratios are left out, as docker compose prints them (`omitempty`);
    /// `parallelism: 0` stays.
    #[serde(skip_serializing_if = "none_or_zero_duration")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    #[serde(skip_serializing_if = "none_or_zero_duration")]
    pub monitor: Option<Duration>,
    #[serde(skip_serializing_if = "none_or_zero_ratio")]
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` or `start-first`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

fn none_or_zero_duration(d: &Option<Duration>) -> bool {
    d.is_none_or(|d| d.0.is_zero())
}

fn none_or_zero_ratio(r: &Option<f64>) -> bool {
    r.is_none_or(|r| r == 0.0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceNetwork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    /// Other per-network options (`priority`, `link_local_ips`, `x-*` …), kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A service's use of a top-level secret or config, in long syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FileReference {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// File mode, e.g. `0o400` is 256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `x-*` fields, kept for `config`'s YAML (its JSON drops them, as compose's does).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ulimit {
    Single(i64),
    Range { soft: i64, hard: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Volume {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A top-level secret or config: where its content comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FileObject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Absolute path, resolved against the project directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A size in bytes. Compose units are binary: `512m` is 512 MiB. Serialized as a string of digits,
/// as `docker compose config` prints it and the schema requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a compose size: `1024`, `512k`, `512m`, `1.5G`, `1gb`, `2GiB` (all binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. `512m` or `1.5G`)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{text}` has an unknown size unit `{other}` (use b, k, m, g or t)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// A duration, printed the way Go prints them (`30s`, `1m30s`, `1.5s`, `500ms`), as compose does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ns = self.0.as_nanos();
        if total_ns == 0 {
            return f.write_str("0s");
        }
        if total_ns < 1_000 {
            return write!(f, "{total_ns}ns");
        }
        if total_ns < 1_000_000 {
            return write!(f, "{}µs", trim_frac(total_ns as f64 / 1e3));
        }
        if total_ns < 1_000_000_000 {
            return write!(f, "{}ms", trim_frac(total_ns as f64 / 1e6));
        }
        let secs_total = self.0.as_secs();
        let h = secs_total / 3600;
        let m = (secs_total % 3600) / 60;
        let s = (secs_total % 60) as f64 + f64::from(self.0.subsec_nanos()) / 1e9;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", trim_frac(s))
    }
}

fn trim_frac(v: f64) -> String {
    let s = format!("{v:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a compose duration: Go syntax (`1h30m`, `10s`, `1.5s`, `500ms`, `2us`, `10ns`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration (expected e.g. `30s`, `1m30s` or `500ms`)");
    if t.is_empty() {
        return Err(bad());
    }
    if t == "0" {
        return Ok(Duration::default());
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[u..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration(std::time::Duration::from_secs_f64(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("1gb"), Ok(1 << 30));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn durations_print_like_go() {
        for (input, shown) in [
            ("30s", "30s"),
            ("1m30s", "1m30s"),
            ("90s", "1m30s"),
            ("1.5s", "1.5s"),
            ("500ms", "500ms"),
            ("2h", "2h0m0s"),
            ("0", "0s"),
        ] {
            assert_eq!(
                parse_duration(input).map(|d| d.to_string()),
                Ok(shown.into())
            );
        }
        assert!(parse_duration("10 minutes").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn published_ranges_expand() {
        let p = Port {
            published: Some("8000-8002".into()),
            ..Port::default()
        };
        assert_eq!(p.published_ports(), vec![8000, 8001, 8002]);
    }
}
