//! Desired state: per host, the pods this run wants, each with a spec hash that changes exactly
//! when what runs changes. Pure: the pods, the resolved image digests and the networks come in as
//! values.
//!
//! The hash covers the whole [`PodSpec`] (images, entrypoint, command, env, user, mounts, files,
//! resources, healthcheck, restart policy, stop signal, ports, hostname, ...) plus what the spec
//! does not carry: the digest each image reference resolved to (a tag pushed again is a change)
//! and the compose networks the pod joins. Secret and config contents enter the hash as their
//! sha256, never verbatim, so the canonical form can be shown when debugging without leaking them.
//! The hash is over a canonical JSON (object keys sorted at every level), so it does not depend on
//! the order fields are declared in `proto` or on serde_json's features; a field added to the
//! protocol with `skip_serializing_if` for its default leaves every existing hash unchanged.
//!
//! The host a pod runs on is *not* in its hash: moving a pod is a create on one host and a remove
//! on the other ([`super::diff`]), not a change of spec.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::proto::PodSpec;

/// Bumped when the canonical form changes meaning: every pod is then replaced once.
const HASH_VERSION: u32 = 1;

/// One pod to run, as the executor builds it from the placement and the pod model: the spec it
/// will send in `Apply` (its `spec_hash` is ignored and filled in by [`build`]), the host the
/// placement chose, and the compose networks the pod joins (the protocol's `PodSpec` has no field
/// for them yet).
#[derive(Debug, Clone, PartialEq)]
pub struct PodInput {
    pub host: String,
    pub spec: PodSpec,
    pub networks: Vec<String>,
}

/// A replica of a service: `(service, replica)`, replicas numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Replica {
    pub service: String,
    pub replica: u32,
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.replica)
    }
}

/// A pod of the desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPod {
    pub name: String,
    pub host: String,
    /// Lowercase hex sha256 of the canonical form; equal to `spec.spec_hash`.
    pub spec_hash: String,
    /// The containers, in spec order.
    pub containers: Vec<Replica>,
    /// Services of this pod whose container has a healthcheck.
    pub healthchecked: BTreeSet<String>,
    /// Image references to pull, sorted, without duplicates.
    pub images: Vec<String>,
    /// The spec to send, with `spec_hash` set.
    pub spec: PodSpec,
}

/// What this run wants, per host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    /// Host → its pods, sorted by name. Hosts without pods are absent.
    pub hosts: BTreeMap<String, Vec<DesiredPod>>,
    /// The services this run converges: their pods not desired are removed. Services with zero
    /// replicas are here and have no pod.
    pub managed: BTreeSet<String>,
    /// Every service the compose file defines, enabled or disabled by profiles. A running pod of
    /// a defined but unmanaged service is left alone; one of an undefined service is an orphan.
    pub defined: BTreeSet<String>,
}

impl Desired {
    /// Every pod, by host then name.
    pub fn pods(&self) -> impl Iterator<Item = &DesiredPod> {
        self.hosts.values().flatten()
    }

    /// The pod named `name` on `host`.
    pub fn pod(&self, host: &str, name: &str) -> Option<&DesiredPod> {
        self.hosts
            .get(host)?
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.hosts[host].get(i))
    }

    /// Managed services without any pod: zero replicas (or none placed), skipped by the flow.
    pub fn skipped(&self) -> Vec<&str> {
        let running: BTreeSet<&str> = self
            .pods()
            .flat_map(|p| &p.containers)
            .map(|c| c.service.as_str())
            .collect();
        self.managed
            .iter()
            .map(String::as_str)
            .filter(|s| !running.contains(s))
            .collect()
    }
}

/// The executor built inconsistent input: a bug on our side, never the user's (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error("pod `{pod}` is desired twice (on {first} and {second})")]
    DuplicatePod {
        pod: String,
        first: String,
        second: String,
    },
    #[error("pod `{pod}` runs `{replica}`, which another pod runs too")]
    DuplicateReplica { pod: String, replica: Replica },
    #[error("pod `{pod}` runs service `{service}`, which this run does not manage")]
    Unmanaged { pod: String, service: String },
    #[error("pod `{pod}` has no container")]
    Empty { pod: String },
}

/// Builds the desired state: hashes every pod, indexes it by host. `digests` maps image
/// references (as written in the specs) to the digest they resolve to now; a reference missing
/// from it is hashed as written (then only a change of the reference itself is seen).
pub fn build(
    pods: Vec<PodInput>,
    digests: &BTreeMap<String, String>,
    managed: BTreeSet<String>,
    defined: BTreeSet<String>,
) -> Result<Desired, DesiredError> {
    let mut hosts: BTreeMap<String, Vec<DesiredPod>> = BTreeMap::new();
    let mut host_of: BTreeMap<String, String> = BTreeMap::new();
    let mut replicas: BTreeSet<Replica> = BTreeSet::new();
    for input in pods {
        let PodInput {
            host,
            mut spec,
            networks,
        } = input;
        if let Some(first) = host_of.insert(spec.name.clone(), host.clone()) {
            return Err(DesiredError::DuplicatePod {
                pod: spec.name,
                first,
                second: host,
            });
        }
        if spec.containers.is_empty() {
            return Err(DesiredError::Empty { pod: spec.name });
        }
        let mut containers = Vec::with_capacity(spec.containers.len());
        let mut healthchecked = BTreeSet::new();
        for c in &spec.containers {
            if !managed.contains(&c.service) {
                return Err(DesiredError::Unmanaged {
                    pod: spec.name.clone(),
                    service: c.service.clone(),
                });
            }
            let replica = Replica {
                service: c.service.clone(),
                replica: c.replica,
            };
            if !replicas.insert(replica.clone()) {
                return Err(DesiredError::DuplicateReplica {
                    pod: spec.name.clone(),
                    replica,
                });
            }
            if c.healthcheck
                .as_ref()
                .is_some_and(|h| !is_disabled(&h.test))
            {
                healthchecked.insert(c.service.clone());
            }
            containers.push(replica);
        }
        let images: BTreeSet<String> = spec.containers.iter().map(|c| c.image.clone()).collect();
        let hash = spec_hash(&spec, digests, &networks);
        spec.spec_hash = hash.clone();
        hosts.entry(host.clone()).or_default().push(DesiredPod {
            name: spec.name.clone(),
            host,
            spec_hash: hash,
            containers,
            healthchecked,
            images: images.into_iter().collect(),
            spec,
        });
    }
    for pods in hosts.values_mut() {
        pods.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(Desired {
        hosts,
        managed,
        defined,
    })
}

/// `healthcheck: {test: [NONE]}` (or `disable: true`, normalized to it) turns the image's check off.
fn is_disabled(test: &[String]) -> bool {
    test.first().is_none_or(|t| t == "NONE")
}

/// The spec hash of `spec` (its own `spec_hash` field is ignored): lowercase hex sha256 of
/// [`canonical`].
pub fn spec_hash(
    spec: &PodSpec,
    digests: &BTreeMap<String, String>,
    networks: &[String],
) -> String {
    hex::encode(Sha256::digest(
        canonical(spec, digests, networks).as_bytes(),
    ))
}

/// The text the spec hash is computed over: compact JSON with sorted keys, secrets replaced by
/// their sha256. Safe to print.
pub fn canonical(
    spec: &PodSpec,
    digests: &BTreeMap<String, String>,
    networks: &[String],
) -> String {
    let mut pod = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(obj) = pod.as_object_mut() {
        obj.remove("spec_hash");
    }
    // File contents (secrets, configs) enter as their hash: a rotated secret is a change, and the
    // canonical text never holds the secret.
    if let Some(containers) = pod.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers {
            let Some(files) = c.get_mut("files").and_then(Value::as_array_mut) else {
                continue;
            };
            for f in files {
                let Some(obj) = f.as_object_mut() else {
                    continue;
                };
                if let Some(content) = obj.remove("content_b64") {
                    let text = content.as_str().unwrap_or_default();
                    obj.insert(
                        "content_sha256".into(),
                        Value::String(hex::encode(Sha256::digest(text.as_bytes()))),
                    );
                }
            }
        }
    }
    let images: BTreeMap<&str, Value> = spec
        .containers
        .iter()
        .map(|c| {
            let digest = digests
                .get(&c.image)
                .map_or(Value::Null, |d| Value::String(d.clone()));
            (c.image.as_str(), digest)
        })
        .collect();
    let networks: BTreeSet<&String> = networks.iter().collect();
    let whole = serde_json::json!({
        "version": HASH_VERSION,
        "pod": pod,
        "digests": images,
        "networks": networks,
    });
    let mut out = String::new();
    write_sorted(&whole, &mut out);
    out
}

/// Compact JSON with object keys sorted at every level.
fn write_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
