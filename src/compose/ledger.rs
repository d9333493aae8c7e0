//! The fidelity ledger: for every key of the Compose Specification, whether compose-fleet
//! *honours* it, *accepts* it without honouring it yet (a warning naming key and service), or
//! *rejects* it (an error). Nothing a user writes is dropped silently: `config --check` prints the
//! ledger of a project, `--strict` turns its warnings into errors.
//!
//! The tables below are the truth about the runtime; change them when the runtime learns a key.

use serde::Serialize;

use super::model::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The runtime does what the key says.
    Honoured,
    /// Loaded and printed by `config`, but the runtime ignores it (yet): a warning.
    Accepted,
    /// compose-fleet cannot run a project that uses it: an error.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Honoured => "honoured",
            Status::Accepted => "accepted, not honoured",
            Status::Rejected => "rejected",
        }
    }
}

/// How one key is treated, and why when it is not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub status: Status,
    pub reason: &'static str,
}

const fn honoured() -> Rule {
    Rule {
        status: Status::Honoured,
        reason: "",
    }
}

const fn accepted(reason: &'static str) -> Rule {
    Rule {
        status: Status::Accepted,
        reason,
    }
}

const fn rejected(reason: &'static str) -> Rule {
    Rule {
        status: Status::Rejected,
        reason,
    }
}

/// One use of a key in the project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The key's path below the service (`build`, `deploy.endpoint_mode`) or at the top level.
    pub key: String,
    /// The service using it; `None` for top-level keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub status: Status,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: String,
    #[serde(serialize_with = "ser_location")]
    pub location: Location,
}

fn ser_location<S: serde::Serializer>(l: &Location, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(l)
}

/// Every key used by a project, classified.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ledger {
    pub entries: Vec<Entry>,
}

impl Ledger {
    pub fn record(&mut self, key: &str, service: Option<&str>, rule: Rule, location: Location) {
        self.entries.push(Entry {
            key: key.to_string(),
            service: service.map(String::from),
            status: rule.status,
            reason: rule.reason.to_string(),
            location,
        });
    }

    /// Entries with the given status.
    pub fn with_status(&self, status: Status) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.status == status)
    }
}

/// All keys of the spec's `service` definition. `None`: not a key of the spec.
pub fn service_key(key: &str) -> Option<Rule> {
    const NOT_YET: &str = "the agent does not implement it yet";
    Some(match key {
        "image" | "command" | "entrypoint" | "environment" | "env_file" | "ports" | "volumes"
        | "depends_on" | "healthcheck" | "deploy" | "restart" | "networks" | "network_mode"
        | "secrets" | "configs" | "hostname" | "user" | "working_dir" | "read_only" | "tmpfs"
        | "ulimits" | "sysctls" | "cap_add" | "cap_drop" | "privileged" | "stop_signal"
        | "stop_grace_period" | "labels" | "profiles" | "extends" | "mem_limit"
        | "mem_reservation" | "cpus" | "pids_limit" | "scale" | "links" | "volumes_from"
        | "expose" | "container_name" | "label_file" | "build" => honoured(),
        "develop" => accepted("watch mode is a local development feature"),
        "annotations" => accepted("OCI annotations are not passed to the runtime yet"),
        "attach" => accepted("logs are read with `compose-fleet logs`"),
        "blkio_config" => accepted("block I/O limits are not applied yet"),
        "cgroup" | "cgroup_parent" => accepted("the agent places every pod in its own cgroup"),
        "cpu_count" | "cpu_percent" | "cpu_shares" | "cpu_quota" | "cpu_period"
        | "cpu_rt_period" | "cpu_rt_runtime" | "cpuset" => {
            accepted("only `cpus` and `deploy.resources` cpu limits are applied")
        }
        "credential_spec" | "isolation" => accepted("a Windows-only setting"),
        "device_cgroup_rules" | "devices" | "gpus" => {
            accepted("devices are not passed to containers yet")
        }
        "dns" | "dns_opt" | "dns_search" => accepted("pods use the agent's DNS server"),
        "domainname" | "mac_address" => accepted(NOT_YET),
        "provider" => rejected("services backed by a provider plugin cannot run on the fleet"),
        "external_links" => accepted("containers outside the project are not reachable by name"),
        "extra_hosts" => accepted("/etc/hosts entries are not added yet"),
        "group_add" => accepted(NOT_YET),
        "init" => accepted("the agent's shim already reaps zombies"),
        "ipc" | "pid" | "uts" | "userns_mode" => {
            accepted("namespace sharing modes are not supported yet")
        }
        "logging" => accepted("the agent keeps logs itself; logging drivers are not used"),
        "memswap_limit" | "mem_swappiness" | "oom_kill_disable" | "oom_score_adj" | "shm_size" => {
            accepted(NOT_YET)
        }
        "models" => accepted("AI models are not provisioned"),
        "platform" => accepted("the image is pulled for each host's own platform"),
        "post_start" | "pre_stop" => accepted("lifecycle hooks are not run yet"),
        "pull_policy" | "pull_refresh_after" => {
            accepted("images are always pulled by digest when missing")
        }
        "runtime" => accepted("the agent is the runtime"),
        "security_opt" => accepted("the default seccomp profile and no_new_privs always apply"),
        "stdin_open" | "tty" => accepted("containers run detached without a terminal"),
        "storage_opt" => accepted(NOT_YET),
        "use_api_socket" => accepted("there is no Docker API on the hosts"),
        _ => return None,
    })
}

/// Keys of `deploy`.
pub fn deploy_key(key: &str) -> Option<Rule> {
    Some(match key {
        "mode" | "replicas" | "resources" | "placement" | "restart_policy" => honoured(),
        // Rolling updates and whole-release rollbacks (src/deploy/release.rs, flow.rs).
        // `order`, `max_failure_ratio` too (src/deploy/rollout.rs, the agent's generations).
        "rollback_config" | "update_config" => honoured(),
        "endpoint_mode" => accepted("service names resolve to every healthy replica (dnsrr)"),
        "labels" => accepted("service labels have no meaning without a Swarm manager"),
        _ => return None,
    })
}

/// The ledger's name of a key of `deploy` ([`deploy_key`]): `deploy.replicas`.
pub fn deploy_path(key: &str) -> Option<&'static str> {
    Some(match key {
        "mode" => "deploy.mode",
        "replicas" => "deploy.replicas",
        "resources" => "deploy.resources",
        "placement" => "deploy.placement",
        "restart_policy" => "deploy.restart_policy",
        "rollback_config" => "deploy.rollback_config",
        "update_config" => "deploy.update_config",
        "endpoint_mode" => "deploy.endpoint_mode",
        "labels" => "deploy.labels",
        _ => return None,
    })
}

/// Top-level keys.
pub fn top_key(key: &str) -> Option<Rule> {
    Some(match key {
        "name" | "services" | "networks" | "volumes" | "secrets" | "configs" | "include" => {
            honoured()
        }
        "version" => accepted("obsolete; ignored, as docker compose does"),
        "models" => accepted("AI models are not provisioned"),
        _ => return None,
    })
}

/// The keys a service may have, for "did you mean" suggestions.
pub const SERVICE_KEYS: &[&str] = &[
    "develop",
    "deploy",
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "label_file",
    "environment",
    "expose",
    "extends",
    "provider",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "models",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "secrets",
    "sysctls",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "uts",
    "userns_mode",
    "volumes",
    "volumes_from",
    "working_dir",
];

pub const TOP_KEYS: &[&str] = &[
    "version", "name", "include", "services", "models", "networks", "volumes", "secrets", "configs",
];

pub const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "endpoint_mode",
    "replicas",
    "labels",
    "rollback_config",
    "update_config",
    "resources",
    "restart_policy",
    "placement",
];

/// The closest known key, when one is close enough to be a typo.
pub fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    crate::diag::did_you_mean(key, known.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_key_is_classified() {
        for k in SERVICE_KEYS {
            assert!(service_key(k).is_some(), "service key {k}");
        }
        for k in TOP_KEYS {
            assert!(top_key(k).is_some(), "top key {k}");
        }
        for k in DEPLOY_KEYS {
            assert!(deploy_key(k).is_some(), "deploy key {k}");
            assert_eq!(deploy_path(k), Some(format!("deploy.{k}")).as_deref());
        }
        assert_eq!(suggest("imgae", SERVICE_KEYS), Some("image"));
        assert_eq!(suggest("zzzz", SERVICE_KEYS), None);
    }
}
