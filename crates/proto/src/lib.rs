//! The agent protocol: the one definition of every message between the CLI and the agent.
//!
//! Both binaries compile this crate; nothing else defines a message. Messages are JSON, one per
//! line, over the stdin/stdout of `compose-fleet-agent rpc` run through SSH (which the agent bridges
//! to its daemon's unix socket).
//!
//! ```text
//!  CLI                                   agent rpc / daemon
//!   │ ── {"id":0,"type":"hello",...} ──────▶ │   handshake first, always
//!   │ ◀── {"id":0,"ok":{"type":"hello",...}} │   carries PROTOCOL_VERSION and host facts
//!   │      (version differs → CLI pushes the matching agent and reconnects)
//!   │ ── {"id":1,"type":"apply",...} ──────▶ │
//!   │ ◀── {"id":1,"more":true,"ok":{...}} ── │   streaming replies (logs, exec) set `more`
//!   │ ◀── {"id":1,"ok":{...}} ────────────── │   the last reply for an id has no `more`
//!   │ ◀── {"id":2,"err":{...}} ───────────── │   failures carry their cause chain
//! ```
//!
//! Lines that do not parse as a [`ResponseFrame`] (login banners, motd, shell noise) are skipped by
//! the reader, never treated as errors.

pub mod net;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change. The CLI refuses to talk to an agent of another version and
/// upgrades it instead.
pub const PROTOCOL_VERSION: u32 = 2;

/// The longest line either side accepts, so a broken peer cannot make the other buffer forever.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// A request with the id its replies will carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Handshake: the first request on every connection.
    Hello {
        protocol_version: u32,
    },
    /// The desired pods of one project on this host; the agent reconciles to exactly this set.
    Apply(ApplyRequest),
    /// Changes some pods of one project and leaves its other pods as they are: what `up` sends
    /// as its flow releases pods one at a time.
    ApplyPods(ApplyPodsRequest),
    /// Observed state of one project (or all projects when `project` is `None`).
    Status {
        project: Option<String>,
    },
    Logs(LogsRequest),
    Exec(ExecRequest),
    /// Remove a project's pods (and its named volumes when `volumes` is set).
    Remove {
        project: String,
        volumes: bool,
    },
}

/// One reply. Exactly one of `ok` and `err` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    /// More replies follow for this id (streams: logs, exec output).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Response>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<AgentError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello(HostFacts),
    Applied(ApplyReport),
    Status(StatusReport),
    LogLine(LogLine),
    ExecOutput {
        stream: Stream,
        data: String,
    },
    ExecExit {
        code: i32,
    },
    Removed {
        pods: Vec<String>,
    },
    /// The last frame of a stream that may carry no items (`Logs`), sent without `more`.
    End,
}

/// A failure on the agent's side, with the chain of causes (outermost first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or named something that does not exist.
    BadRequest,
    /// The protocol versions differ; the CLI should upgrade the agent.
    VersionMismatch,
    /// Something on the host failed (kernel, disk, registry).
    Host,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

/// What a host is: the answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub protocol_version: u32,
    /// The agent's own version (the package version).
    pub agent_version: String,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory: u64,
    pub kernel: String,
    /// `v1` or `v2`.
    pub cgroup: String,
    pub hostname: String,
    /// Free bytes on the filesystem holding the agent's state directory.
    pub free_disk: u64,
    /// The pod subnet recorded on this host, if it has one: the CLI keeps it (see
    /// [`net::assign_subnets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<net::Ipv4Net>,
}

/// The desired state of one project on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub project: String,
    pub pods: Vec<PodSpec>,
    /// Credentials for registries, by registry host. Never logged, never written to disk.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_auth: BTreeMap<String, RegistryAuth>,
    /// Registries reached over plain http (the inventory marks them insecure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// This host's place in the fleet network. `None` keeps what the host has recorded (pods get
    /// no fleet network on a host that never had a subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<HostNetwork>,
}

/// Some pods of one project on one host: each of `pods` is created, or replaced when its spec
/// hash differs from the running pod's; each of `remove` is stopped and deleted. Pods named in
/// neither are left alone. The reply is [`Response::Applied`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyPodsRequest {
    pub project: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// As in [`ApplyRequest`]: never logged, never written to disk.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_auth: BTreeMap<String, RegistryAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
}

/// A host's pod subnet, decided by the CLI and recorded by the agent, and how to reach the other
/// hosts' pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetwork {
    /// The fleet CIDR; pod traffic leaving it is masqueraded.
    pub fleet: net::Ipv4Net,
    /// This host's pod subnet (a `/24` of `fleet`).
    pub subnet: net::Ipv4Net,
    /// Every other host's pod subnet and the address to route it through (host-gw: the peer
    /// must be on this host's L2 segment). The agent's routes become exactly this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerSubnet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSubnet {
    pub host: String,
    pub subnet: net::Ipv4Net,
    pub via: std::net::Ipv4Addr,
}

/// How a pod joins the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PodNetwork {
    #[serde(default)]
    pub mode: NetworkMode,
    /// The compose networks the pod is on; empty means the project's default network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A veth on the host's bridge, an address from the host's pod subnet.
    #[default]
    Fleet,
    /// Only loopback (compose `network_mode: none`).
    None,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A pod: containers sharing one network (and uts, ipc) namespace, always on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Unique within the project, e.g. `web-1` (main service name and replica number).
    pub name: String,
    pub hostname: String,
    /// Hash of everything in this spec: a pod whose hash changed is replaced.
    pub spec_hash: String,
    pub containers: Vec<ContainerSpec>,
    /// Published ports of the pod, DNAT'ed on the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub network: PodNetwork,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    /// The compose service this container runs.
    pub service: String,
    /// Replica number, from 1.
    pub replica: u32,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, (i64, i64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Secret and config files, delivered with the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileDelivery>,
    #[serde(default)]
    pub resources: ResourceLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// A named volume under the agent's state dir, kept across pod replacement.
    Volume {
        name: String,
        target: String,
        read_only: bool,
    },
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

/// A secret or config file's content, mounted into the container. Secrets live on a tmpfs, 0400.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDelivery {
    pub target: String,
    /// Base64 of the content.
    pub content_b64: String,
    pub mode: u32,
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

impl std::fmt::Debug for FileDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDelivery")
            .field("target", &self.target)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("secret", &self.secret)
            .field(
                "content_b64",
                &if self.secret {
                    "<redacted>"
                } else {
                    "<content>"
                },
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u64,
    pub start_period_ms: u64,
    pub start_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    OnFailure {
        max_retries: Option<u32>,
    },
    UnlessStopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub published: u16,
    pub target: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub replaced: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Problems that did not stop the apply but will bite (a host firewall dropping forwarded
    /// pod traffic), one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusReport {
    pub pods: Vec<PodStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    pub project: String,
    pub name: String,
    pub spec_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub service: String,
    pub replica: u32,
    /// `created`, `running`, `exited`, `restarting`, `failed`.
    pub state: String,
    /// `starting`, `healthy`, `unhealthy`, or absent without a healthcheck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub restarts: u32,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub project: String,
    /// Services to show; all when empty.
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    #[serde(default)]
    pub follow: bool,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub pod: String,
    pub service: String,
    pub stream: Stream,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub project: String,
    pub pod: String,
    pub service: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl RequestFrame {
    /// One line of the wire format, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no custom errors.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ResponseFrame {
    pub fn ok(id: u64, response: Response) -> Self {
        ResponseFrame {
            id,
            more: false,
            ok: Some(response),
            err: None,
        }
    }

    pub fn err(id: u64, error: AgentError) -> Self {
        ResponseFrame {
            id,
            more: false,
            ok: None,
            err: Some(error),
        }
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one line from the agent; `None` for noise (banners, motd) that is not a frame.
    pub fn parse_line(line: &str) -> Option<ResponseFrame> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_as_one_line() {
        let frame = RequestFrame {
            id: 0,
            request: Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        };
        let line = frame.to_line();
        assert_eq!(line, r#"{"id":0,"type":"hello","protocol_version":2}"#);
        let back: RequestFrame = serde_json::from_str(&line).expect("parses");
        assert_eq!(back, frame);
    }

    #[test]
    fn noise_lines_are_not_frames() {
        assert_eq!(ResponseFrame::parse_line("Welcome to Debian!"), None);
        assert_eq!(ResponseFrame::parse_line("{not json"), None);
        let ok = ResponseFrame::ok(3, Response::ExecExit { code: 2 }).to_line();
        assert_eq!(
            ResponseFrame::parse_line(&ok),
            Some(ResponseFrame::ok(3, Response::ExecExit { code: 2 }))
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let auth = RegistryAuth {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
        let file = FileDelivery {
            target: "/run/secrets/db".into(),
            content_b64: "aHVudGVyMg==".into(),
            mode: 0o400,
            secret: true,
            uid: None,
            gid: None,
        };
        assert!(!format!("{file:?}").contains("aHVudGVyMg=="));
    }
}
