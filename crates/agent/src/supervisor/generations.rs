//! Generations of a pod: a start-first replacement runs the new generation beside the old one,
//! so one pod name can stand for two running sandboxes for a while. Pod identity (its name: what
//! the CLI, `Status` and the desired state speak of) is kept apart from the instance (the name
//! of one generation's sandbox, cgroups, network namespace, address and state directory).
//!
//! A pod's instances alternate between its own name and its [`twin`], so that at most two exist
//! and a third replacement reuses the first one's name once that generation is gone. Which
//! instance is current, and which outgoing, is recorded in `generations.json` beside the desired
//! state (only for pods not simply running under their own name), so that a restarted daemon
//! re-adopts both generations and the next request can still retire the old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{read_json, write_json, StateRoot};
use super::ProjectRt;
use crate::proto::{NetworkMode, PodSpec};

/// The other instance name of pod `pod`, whose running generation is `instance`. A pod name
/// always ends in `-<replica>`, so `<pod>.b` names no other pod.
pub fn twin(pod: &str, instance: &str) -> String {
    if instance == pod {
        format!("{pod}.b")
    } else {
        pod.to_string()
    }
}

/// How a pod with a new spec hash is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// Stop the running generation (and any outgoing one), then start the new one.
    StopFirst,
    /// Start the new generation beside the running one, which becomes outgoing (an older
    /// outgoing generation is stopped).
    StartFirst,
    /// The new spec is the outgoing generation's: it becomes current again at once, and the
    /// generation that replaced it is stopped (a rollback of a replacement not yet retired).
    Revert,
}

/// What replacing a pod running `current` (with an outgoing generation of hash `outgoing`) by
/// `spec` means, when the CLI asked for start-first or not. Two generations cannot bind the same
/// host port, nor share the host's network: such pods go stop-first whatever was asked.
pub fn replacement(outgoing: Option<&str>, spec: &PodSpec, start_first: bool) -> Replacement {
    if outgoing == Some(spec.spec_hash.as_str()) {
        return Replacement::Revert;
    }
    let side_by_side = spec.ports.is_empty() && spec.network.mode != NetworkMode::Host;
    if start_first && side_by_side {
        Replacement::StartFirst
    } else {
        Replacement::StopFirst
    }
}

/// One pod's generations as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Record {
    /// The current generation's instance.
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<Outgoing>,
}

/// The outgoing generation, enough to adopt it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub instance: String,
    pub spec_hash: String,
    /// Its containers, as (service, replica).
    pub containers: Vec<(String, u32)>,
}

/// The records of a project: pods not simply running under their own name.
pub(super) fn records(project: &ProjectRt) -> BTreeMap<String, Record> {
    project
        .pods
        .iter()
        .filter(|(name, pod)| pod.instance != **name || pod.outgoing.is_some())
        .map(|(name, pod)| {
            let outgoing = pod.outgoing.as_deref().map(|o| Outgoing {
                instance: o.instance.clone(),
                spec_hash: o.spec_hash.clone(),
                containers: o
                    .containers
                    .iter()
                    .map(|c| (c.launch.service.clone(), c.launch.replica))
                    .collect(),
            });
            (
                name.clone(),
                Record {
                    instance: pod.instance.clone(),
                    outgoing,
                },
            )
        })
        .collect()
}

/// Saves the records of `project` (named `name`); none leaves no file.
pub(super) fn save(state: &StateRoot, name: &str, project: &ProjectRt) -> std::io::Result<()> {
    let path = state.generations(name);
    let records = records(project);
    if records.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    write_json(&path, &records)
}

/// The records saved for project `name` (none when the file is missing or unreadable: every pod
/// then runs under its own name, as before start-first existed).
pub fn load(state: &StateRoot, name: &str) -> BTreeMap<String, Record> {
    read_json(&state.generations(name)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PortMapping;

    fn spec(hash: &str, ports: bool) -> PodSpec {
        PodSpec {
            name: "web-1".into(),
            hostname: "web-1".into(),
            spec_hash: hash.into(),
            containers: Vec::new(),
            ports: if ports {
                vec![PortMapping {
                    host_ip: None,
                    published: 8080,
                    target: 80,
                    protocol: "tcp".into(),
                }]
            } else {
                Vec::new()
            },
            network: Default::default(),
        }
    }

    #[test]
    fn instances_alternate_between_the_pod_name_and_its_twin() {
        assert_eq!(twin("web-1", "web-1"), "web-1.b");
        assert_eq!(twin("web-1", "web-1.b"), "web-1");
    }

    #[test]
    fn a_published_port_forces_stop_first_and_the_outgoing_spec_reverts() {
        assert_eq!(
            replacement(None, &spec("h2", false), true),
            Replacement::StartFirst
        );
        assert_eq!(
            replacement(None, &spec("h2", true), true),
            Replacement::StopFirst,
            "two generations cannot bind one host port"
        );
        assert_eq!(
            replacement(None, &spec("h2", false), false),
            Replacement::StopFirst
        );
        assert_eq!(
            replacement(Some("h1"), &spec("h1", false), false),
            Replacement::Revert,
            "back to the generation still serving, whatever the order"
        );
        assert_eq!(
            replacement(Some("h1"), &spec("h3", false), true),
            Replacement::StartFirst
        );
    }
}
