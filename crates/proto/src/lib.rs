//! The agent protocol: the one definition of every message between the CLI and the agent, and
//! the rules of a connection ([`ServerConnection`]).
//!
//! Both binaries compile this crate; nothing else defines a message. Messages are JSON, one per
//! line, over the stdin/stdout of `compose-fleet-agent rpc` run through SSH (which the agent bridges
//! to its daemon's unix socket).
//!
//! ```text
//!  CLI                                   agent rpc / daemon
//!   │ ── {"id":0,"type":"hello",...} ──────▶ │   handshake first, always
//!   │ ◀── {"id":0,"ok":{"type":"hello",...}} │   carries PROTOCOL_VERSION and host facts
//!   │      (version differs → the agent answers version_mismatch and closes; the CLI pushes
//!   │       the matching agent and reconnects)
//!   │ ── {"id":1,"type":"apply",...} ──────▶ │
//!   │ ◀── {"id":1,"more":true,"ok":{...}} ── │   streaming replies (logs, exec) set `more`
//!   │ ◀── {"id":1,"ok":{...}} ────────────── │   the last reply for an id has no `more`
//!   │ ◀── {"id":2,"err":{...}} ───────────── │   failures carry their cause chain
//!   │ ── {"id":3,"type":"watch","since":N} ▶ │   held until a container's state, health or
//!   │ ◀── {"id":3,"ok":{"type":"watched",    │   exit changes after change N (or a timeout):
//!   │       "changes":M,"status":{...}}} ─── │   the next watch asks with M
//!   │ ── not json ─────────────────────────▶ │
//!   │ ◀── {"err":{"kind":"protocol",...}} ── │   a broken rule: no id, and the agent closes
//! ```
//!
//! The rules the agent enforces, in [`ServerConnection`]: `hello` comes first (anything else is
//! answered with a `protocol` error and the connection is closed); after a version mismatch nothing
//! else is served; a line that does not parse is answered with a `protocol` error that carries no
//! id (there is no request to match it to) and the connection is closed; a line longer than
//! [`ServerConnection::max_line_bytes`] is refused before it is buffered ([`LineBuffer`]).
//!
//! Lines that do not parse as a [`ResponseFrame`] (login banners, motd, shell noise) are skipped by
//! the CLI's reader, never treated as errors.

pub mod mesh;
pub mod net;
pub mod service;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change. The CLI refuses to talk to an agent of another version and
/// upgrades it instead.
///
/// 2: the host network, pod networks and subnets (the network work).
/// 3: a protocol error frame carries no id (`ResponseFrame::id` is optional) and has the kind
/// `protocol`; the agent closes the connection after it and after a version mismatch.
/// 4: `exec_input`, `control` and `pull` (operating a project), `services` (the service map:
/// VIPs and DNS), `blobs_wanted`/`blob_chunk`/`image_commit` (images delivered without a
/// registry), the mesh in `HostFacts` and `HostNetwork`, exec's stdin and tty.
/// 5: deploy leases (`lock`, renewed by its fence, and `unlock`; the fence on
/// `apply_pods`/`remove`), release
/// records (`record_release`, `releases`), `network_mode: host` and internal networks in pod
/// networks, compressed blob chunks (`encoding`), the service map's digest and user-stopped
/// containers in `Status`.
/// 6: start-first generations (`start_first` and `retire` in `apply_pods`; a pod's `instance`
/// and `outgoing` generation in `Status`), `services_held` (the map a host holds, for
/// `--on-unreachable`), the mesh device's kind (kernel or userspace) in the host's facts.
/// 7: `watch` (a long poll answered at the next change of a project's containers, instead of
/// polling `status`), the agent's `capabilities` in its facts, the change counter in
/// `apply_pods`' report.
pub const PROTOCOL_VERSION: u32 = 7;

/// The longest line either side accepts, so a broken peer cannot make the other buffer forever.
///
/// Why 64 MiB: the largest line is an `Apply`, which carries every pod of one project on one host
/// with its secret and config files (base64). Docker caps a secret at 500 KB and Kubernetes a
/// Secret or ConfigMap at 1 MiB; 64 MiB holds ~40 such files, or ~30,000 pods of ~2 KB without
/// files, while bounding what one connection can make the daemon or the CLI hold. The CLI refuses
/// to send a longer request with a message instead of letting the agent close the connection.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The longest line before the handshake: a `hello` is ~50 bytes, so nothing larger is buffered
/// from a peer that has not yet shown it speaks the protocol.
pub const MAX_HELLO_LINE_BYTES: usize = 64 << 10;

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
        /// The deploy lock's fencing number (issue 12): refused when stale.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
    },
    // --- operate (issue 11): exec's stdin ---
    /// Bytes for the stdin of a running `Exec` that asked for one (`ExecRequest::stdin`), named by
    /// the session its [`Response::ExecStarted`] gave; `eof` closes that stdin. Answered `End`.
    ExecInput(ExecInput),
    /// Stop, start or restart the containers of some services of a project on this host, in
    /// place (pods and their specs are kept). Answered `Controlled`.
    Control(ControlRequest),
    /// Pull images into the host's store ahead of the `ApplyPods` that uses them. Answered
    /// `Pulled`, with the failures per image.
    Pull(PullRequest),
    // Service discovery (the netdns work): additive.
    /// The fleet-wide services of one project (VIPs, replica addresses, health): the agent's
    /// load-balancing rules and DNS answers for that project become exactly this. The reply is
    /// [`Response::Services`].
    Services(service::ServiceMap),
    // --- Image delivery without a registry (issue 13): `blobs_wanted`, then `blob_chunk`s,
    // then `image_commit` with the manifest last. See [`BlobChunk`].
    /// Which of these blobs (`sha256:…`) the host lacks; answered by [`Response::BlobsWanted`].
    BlobsWanted {
        digests: Vec<String>,
    },
    /// Bytes of one blob; answered by [`Response::BlobChunk`].
    BlobChunk(BlobChunk),
    /// The manifest, sent after all its blobs: answered by [`Response::ImageCommitted`].
    ImageCommit(ImageCommit),
    // --- lock (issue 12): the deploy lease ---
    /// Takes (`fence: None`) or renews (`fence: Some(n)`) the deploy lease of a project on this
    /// host. Answered `Lease`: granted, or refused with the holder's lease.
    Lock(LockRequest),
    /// Releases the lease numbered `fence` (a no-op when another holds it). Answered `Lease`.
    Unlock {
        project: String,
        fence: u64,
    },
    // --- releases (issue 12) ---
    /// Writes (creates or overwrites) one release record of a project on this host, then prunes
    /// that project's records, and only that project's, to the newest `keep`. Answered
    /// `Releases` with the records that remain (without their pods).
    RecordRelease(RecordRelease),
    /// A project's release records on this host, newest first; with `pods` they carry this
    /// host's desired pods (what a rollback re-applies). Answered `Releases`.
    Releases {
        project: String,
        #[serde(default)]
        pods: bool,
    },
    // --- unreachable hosts (issue 12) ---
    /// The service map this host holds for a project (the last one `up` pushed): where every
    /// replica ran then, the hosts that do not answer now included. Answered `ServicesHeld`.
    ServicesHeld {
        project: String,
    },
    // --- watch (issue 11, events): pushed state changes instead of polls ---
    /// `Status` of one project, answered the moment anything the agent observes of any container
    /// changes (state, health, exit, restarts) after the change numbered `since`, or after
    /// `timeout_ms` with nothing changed (so that a silent host is still told from a quiet one).
    /// Answered `Watched`. Only agents whose hello lists [`CAPABILITY_WATCH`] know it.
    Watch(WatchRequest),
}

/// What [`Request::Watch`] waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    pub project: String,
    /// The change number of the last answer seen ([`WatchReport::changes`]); 0 at first, which
    /// any agent has passed (its numbers start at its start time in ms), so it answers at once.
    #[serde(default)]
    pub since: u64,
    /// Answer anyway after this long; the agent caps it at [`MAX_WATCH_MS`].
    #[serde(default)]
    pub timeout_ms: u64,
}

/// The longest a `Watch` is held without an answer.
pub const MAX_WATCH_MS: u64 = 60_000;

/// The hello capability of agents that answer [`Request::Watch`].
pub const CAPABILITY_WATCH: &str = "watch";

/// The answer to [`Request::Watch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchReport {
    /// The agent's change number when this status was read: the next watch's `since`.
    pub changes: u64,
    pub status: StatusReport,
}

/// One reply. Exactly one of `ok` and `err` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request this answers; `None` only on a `protocol` error about a line that is not a
    /// request (the connection closes after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
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
    // --- operate (issue 11) ---
    /// The first frame of an `Exec` with `stdin`: the session to send [`Request::ExecInput`] to.
    ExecStarted {
        session: u64,
    },
    /// The containers a `Control` changed, as `pod/service-replica`.
    Controlled {
        containers: Vec<String>,
    },
    Pulled(PullReport),
    // Service discovery (the netdns work): additive.
    /// The answer to `Services`: how many VIPs this host now load-balances and how many
    /// replicas answer for them.
    Services {
        vips: u32,
        endpoints: u32,
    },
    // --- Image delivery (issue 13).
    /// The blobs of a [`Request::BlobsWanted`] the host lacks, in the order asked.
    BlobsWanted {
        missing: Vec<WantedBlob>,
    },
    /// Where the blob's partial file stands after a [`Request::BlobChunk`].
    BlobChunk {
        digest: String,
        /// The offset the next chunk must start at (the bytes the host holds).
        offset: u64,
        /// The whole blob arrived, matched its digest and size, and is in the store.
        complete: bool,
    },
    ImageCommitted(ImageCommitted),
    // --- lock (issue 12) ---
    /// The answer to `Lock`/`Unlock`: `granted` with the caller's lease, or not with the lease
    /// that stands in the way (its holder, its number, when it expires).
    Lease {
        granted: bool,
        lease: Lease,
    },
    // --- releases (issue 12) ---
    /// A project's release records on this host, newest first.
    Releases {
        releases: Vec<ReleaseRecord>,
    },
    // --- unreachable hosts (issue 12) ---
    /// The answer to `ServicesHeld`: the map, or none when the host holds none for the project.
    ServicesHeld {
        #[serde(default)]
        map: Option<service::ServiceMap>,
    },
    // --- watch (issue 11, events) ---
    /// The answer to [`Request::Watch`].
    Watched(WatchReport),
}

/// A blob the host lacks, and how much of it a partial file already holds (resume from there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedBlob {
    pub digest: String,
    #[serde(default)]
    pub offset: u64,
}

/// Bytes `[offset, offset + len)` of a blob of `size` bytes. `offset` must be what the host
/// holds (0 starts over); the host appends to `blobs/sha256/<hex>.partial` and, when `size` bytes
/// are there, verifies digest and size, fsyncs and renames it into place. A blob that does not
/// match is deleted and refused: it is never unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk {
    pub digest: String,
    pub size: u64,
    pub offset: u64,
    /// Base64 of the bytes.
    pub data_b64: String,
    // --- Fast delivery (issue 13, buildpush): additive.
    /// How `data_b64`'s bytes are encoded on the wire: `None` as they are; `Some("gzip")` a gzip
    /// stream of this chunk alone (uncompressed layers travel compressed). `offset`, `size` and
    /// the digest are always of the blob's own bytes: the host decompresses (bounded by
    /// [`MAX_CHUNK_BYTES`]) before it writes, and verifies the blob as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
}

/// The most blob bytes one [`BlobChunk`] may carry (after decompression): a host refuses more,
/// so neither side holds more than this per chunk in flight.
pub const MAX_CHUNK_BYTES: usize = 8 << 20;

/// An image's manifest, after its config and layers: the host verifies it against `digest`,
/// checks every blob it names is present, unpacks the layers (verifying each diff_id) and records
/// the image under `reference` and each of `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCommit {
    /// `name@sha256:…`: what pod specs will name.
    pub reference: String,
    pub digest: String,
    /// Base64 of the manifest's bytes (exact: they are what the digest is of).
    pub manifest_b64: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCommitted {
    pub reference: String,
    /// Layers unpacked by this commit (0 when every layer was on the host already).
    #[serde(default)]
    pub layers_unpacked: u32,
    /// Blob bytes this host received for this image's blobs since it last committed them
    /// (resumed transfers count every byte received).
    #[serde(default)]
    pub bytes_received: u64,
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
    /// The client broke a rule of the protocol (no `hello` first, a line that does not parse, a
    /// line too long); the agent closes the connection after this error.
    Protocol,
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
    /// The host's WireGuard public key and how it reaches each other host (the mesh work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<mesh::MeshFacts>,
    /// Whether plain pod-to-pod packets take the agent's eBPF fast path on this host: `on` (its
    /// filter is on the pods' links) or `off` (pods without it: the kernel refused it, see the
    /// agent's log); absent without pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<String>,
    /// Requests this agent serves beyond its protocol version's, by name (e.g.
    /// [`CAPABILITY_WATCH`]): a client uses them only when listed, and falls back otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
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
    /// As in [`ApplyRequest`]: this host's place in the fleet network; `None` keeps what the host
    /// has recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<HostNetwork>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// As in [`ApplyRequest`]: never logged, never written to disk.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_auth: BTreeMap<String, RegistryAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// The deploy lock's fencing number (issue 12): the agent refuses the request when a lease
    /// of this project exists with another number. `None`: no check (an older CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    // --- start-first rolling updates (issue 12) ---
    /// Pods of `pods` to replace start-first: the new generation starts beside the running one,
    /// which keeps serving (and stays in DNS and the VIP sets) until it is retired. A pod that
    /// publishes a host port is replaced stop-first all the same (two generations cannot bind
    /// one port). A pod whose new spec is that of the generation still serving beside it goes
    /// back to that generation at once (a rollback), and the newer one is stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_first: Vec<String>,
    /// Pods whose outgoing generation (the one a start-first replacement left serving) leaves
    /// the VIP sets and DNS answers now, and is then stopped with its `stop_signal` and
    /// `stop_grace_period` and removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retire: Vec<String>,
}

// --- lock (issue 12): the deploy lease ---

/// Who deploys: shown to whoever finds the lease taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub user: String,
    pub machine: String,
    pub pid: u32,
    /// When the deploy started, in unix seconds (the deployer's clock).
    pub started: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub project: String,
    pub owner: LockOwner,
    /// The lease lasts this long unless renewed (the agent's clock), so a killed deploy's lease
    /// expires by itself.
    pub ttl_secs: u64,
    /// `Some(n)`: renew lease `n` (refused when another lease replaced it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// A project's deploy lease on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub project: String,
    pub owner: LockOwner,
    /// The fencing number: one more on every new grant, never reused on this host.
    pub fence: u64,
    /// Seconds until the lease expires (0: expired or released).
    pub expires_in_secs: u64,
}

// --- releases (issue 12) ---

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Being deployed (or the deployer died: a later `up` takes over from the hosts).
    InProgress,
    Succeeded,
    /// Failed and left as it was (`failure_action: pause`, or nothing to roll back to).
    Failed,
    /// Failed, and every host that changed went back to the previous release.
    RolledBack,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::InProgress => "in progress",
            ReleaseStatus::Succeeded => "succeeded",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::RolledBack => "rolled back",
        }
    }
}

/// One numbered release of a project as one host records it: who made it, when, what it
/// changed, how it ended, and this host's desired pods (enough to apply it again). Secret
/// contents are never in it: a secret file's `content_b64` holds `sha256:<hex>` of the content,
/// and the CLI fills the content back in from the secrets it has when it re-applies the release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub project: String,
    pub number: u64,
    /// When the release started, in unix seconds (the deployer's clock).
    pub started: u64,
    /// `user@machine`.
    pub owner: String,
    pub status: ReleaseStatus,
    /// The services whose pods this release creates, replaces, restarts or removes, fleet-wide.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// The services this release converges (all of the file's, or `up SERVICE…`'s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed: Vec<String>,
    /// `rollback --to N` records a release that re-applies release N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// What failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// This host's desired pods of the release's managed services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordRelease {
    pub record: ReleaseRecord,
    /// How many of the project's records to keep (the newest); 0 keeps them all.
    #[serde(default)]
    pub keep: u32,
    /// The deploy lock's fencing number: refused when stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
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
    /// The mesh for peers that are not on-link (the mesh work). `None`: every peer is host-gw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<mesh::MeshConfig>,
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
    /// (netiso) Those of the pod's networks that are `internal: true` (`default` when the
    /// project's default network is). A pod only on internal networks gets no traffic out of
    /// the fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A veth on the host's bridge, an address from the host's pod subnet.
    #[default]
    Fleet,
    /// Only loopback (compose `network_mode: none`).
    None,
    /// (netiso) The host's own network namespace (compose `network_mode: host`): no veth, no
    /// address of its own, no published ports (docker discards them too).
    Host,
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
    /// The agent's change number right after this apply ([`WatchReport::changes`]; 0 from an
    /// agent without `watch`): a watched status numbered below it predates the apply.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusReport {
    pub pods: Vec<PodStatus>,
    /// The digest ([`service::ServiceMap::digest`]) of the service map this host holds for the
    /// project asked about; absent when it holds none (or no project was named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_map: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    pub project: String,
    pub name: String,
    pub spec_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub containers: Vec<ContainerStatus>,
    // --- start-first rolling updates (issue 12) ---
    /// The name this generation's sandbox, address and state use on the host, when it is not
    /// `name` (a start-first replacement runs beside the generation it replaces). Service map
    /// endpoints name the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The generation this one replaced start-first, still running (and serving) until it is
    /// retired (`ApplyPodsRequest::retire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<Box<PodStatus>>,
}

impl PodStatus {
    /// The name of this generation on its host (see [`PodStatus::instance`]).
    pub fn instance(&self) -> &str {
        self.instance.as_deref().unwrap_or(&self.name)
    }
}

/// The pod an instance (a generation's name on its host: the pod's name, or `<pod>.b` beside it
/// during a start-first replacement) belongs to. A pod's name ends in `-<replica>`, so the
/// suffix is never part of one.
pub fn pod_of_instance(instance: &str) -> &str {
    instance.strip_suffix(".b").unwrap_or(instance)
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
    /// Stopped by `compose-fleet stop`: it stays exited, across agent restarts, until `start`,
    /// `restart` or `up` starts it again (as docker compose's `up` starts stopped containers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
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
    /// The container's replica number (0 from an agent that does not say).
    #[serde(default)]
    pub replica: u32,
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
    /// The command reads a stdin fed by [`Request::ExecInput`] (otherwise `/dev/null`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// Run it on a pseudo-terminal of this size (`[rows, cols]`): its stdin, stdout and stderr
    /// are the terminal, whose output comes back as `stdout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<[u16; 2]>,
}

/// What `Control` does to the selected containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Stop (stop signal, grace period, SIGKILL); no restart policy restarts it.
    Stop,
    /// Start what is not running.
    Start,
    /// Stop what runs, then start everything selected.
    Restart,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub project: String,
    /// The services whose containers are changed; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    pub action: ControlAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub images: Vec<String>,
    /// As in [`ApplyRequest`]: never logged, never written to disk.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_auth: BTreeMap<String, RegistryAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PullReport {
    /// The images now in the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pulled: Vec<String>,
    /// Image → why it could not be pulled.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, String>,
}

/// Input for an `Exec`'s stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecInput {
    pub session: u64,
    /// The bytes, hex-encoded (JSON strings carry text only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_hex: String,
    /// Closes the command's stdin after `data_hex`.
    #[serde(default)]
    pub eof: bool,
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
            id: Some(id),
            more: false,
            ok: Some(response),
            err: None,
        }
    }

    pub fn err(id: u64, error: AgentError) -> Self {
        ResponseFrame {
            id: Some(id),
            more: false,
            ok: None,
            err: Some(error),
        }
    }

    /// A `protocol` error about a line that is not a request: it carries no id.
    pub fn protocol_error(message: impl Into<String>) -> Self {
        ResponseFrame {
            id: None,
            more: false,
            ok: None,
            err: Some(AgentError {
                kind: ErrorKind::Protocol,
                message: message.into(),
                causes: vec![],
            }),
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

/// A line over its bound: refused as soon as its byte `max + 1` arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    pub max: usize,
}

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a line is longer than {} bytes", self.max)
    }
}

impl std::error::Error for LineTooLong {}

/// Splits a byte stream into lines of at most `max` bytes (the `\n` not counted), without I/O:
/// the reader feeds it what it has, and a line over the bound is refused before it is buffered.
#[derive(Debug, Clone)]
pub struct LineBuffer {
    line: Vec<u8>,
    max: usize,
}

impl LineBuffer {
    pub fn new(max: usize) -> Self {
        LineBuffer {
            line: Vec::new(),
            max,
        }
    }

    /// Changes the bound (e.g. once the handshake is done).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Takes bytes from `input` up to and including the first `\n`. Returns how many it took and,
    /// when that ended a line, the line (without `\n`).
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), LineTooLong> {
        let newline = input.iter().position(|&b| b == b'\n');
        let body = &input[..newline.unwrap_or(input.len())];
        if self.line.len().saturating_add(body.len()) > self.max {
            self.line = Vec::new();
            return Err(LineTooLong { max: self.max });
        }
        self.line.extend_from_slice(body);
        match newline {
            Some(i) => Ok((i + 1, Some(std::mem::take(&mut self.line)))),
            None => Ok((input.len(), None)),
        }
    }

    /// At the end of the input: the last line when it had no `\n`.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.line.is_empty()).then(|| std::mem::take(&mut self.line))
    }
}

/// What the server does with one line, decided by [`ServerConnection::on_line`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing (a blank line).
    Skip,
    /// The handshake succeeded: answer `hello` with the host facts under this id. The server
    /// answers it before reading on, so nothing is served before the handshake is complete.
    Hello { id: u64 },
    /// Serve this request.
    Serve(RequestFrame),
    /// Send this frame, then close the connection: nothing more is read or served.
    Close(ResponseFrame),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Ready,
    Closed,
}

/// The rules of one connection, on the agent's side, without I/O (the daemon drives it with the
/// lines it reads; the fuzz target with arbitrary ones).
#[derive(Debug, Clone)]
pub struct ServerConnection {
    state: State,
    agent_version: String,
}

impl ServerConnection {
    /// A new connection to an agent of `agent_version` (named in version-mismatch errors).
    pub fn new(agent_version: impl Into<String>) -> Self {
        ServerConnection {
            state: State::AwaitingHello,
            agent_version: agent_version.into(),
        }
    }

    /// Whether the handshake has succeeded.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether a [`Step::Close`] was decided: nothing more may be read or served.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The longest line to accept next: small until the handshake is done.
    pub fn max_line_bytes(&self) -> usize {
        match self.state {
            State::AwaitingHello | State::Closed => MAX_HELLO_LINE_BYTES,
            State::Ready => MAX_LINE_BYTES,
        }
    }

    /// Decides what to do with one line (without its `\n`).
    pub fn on_line(&mut self, line: &[u8]) -> Step {
        if self.state == State::Closed {
            return Step::Skip;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return self.close(ResponseFrame::protocol_error(
                "a request line is not UTF-8; requests are JSON, one per line",
            ));
        };
        let text = text.trim();
        if text.is_empty() {
            return Step::Skip;
        }
        let frame = match serde_json::from_str::<RequestFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                return self.close(ResponseFrame::protocol_error(format!(
                    "a request line does not parse: {e}; requests are JSON, one per line"
                )))
            }
        };
        match (self.state, frame.request) {
            (State::AwaitingHello, Request::Hello { protocol_version })
                if protocol_version == PROTOCOL_VERSION =>
            {
                self.state = State::Ready;
                Step::Hello { id: frame.id }
            }
            (State::AwaitingHello, Request::Hello { protocol_version }) => {
                let error = AgentError {
                    kind: ErrorKind::VersionMismatch,
                    message: format!(
                        "the agent speaks protocol {PROTOCOL_VERSION}, the client \
                         {protocol_version}"
                    ),
                    causes: vec![format!("agent version {}", self.agent_version)],
                };
                self.close(ResponseFrame::err(frame.id, error))
            }
            (State::AwaitingHello, other) => self.close(ResponseFrame::err(
                frame.id,
                protocol(format!(
                    "`{}` before `hello`: the first request on a connection must be `hello`",
                    other.name()
                )),
            )),
            (_, Request::Hello { .. }) => self.close(ResponseFrame::err(
                frame.id,
                protocol("a second `hello` on one connection".to_string()),
            )),
            (_, request) => Step::Serve(RequestFrame {
                id: frame.id,
                request,
            }),
        }
    }

    /// The line being read is over [`ServerConnection::max_line_bytes`].
    pub fn on_line_too_long(&mut self, e: LineTooLong) -> Step {
        self.close(ResponseFrame::protocol_error(format!(
            "{e}{}",
            if self.state == State::AwaitingHello {
                " before `hello`"
            } else {
                ""
            }
        )))
    }

    /// No `hello` arrived in time.
    pub fn on_hello_timeout(&mut self, waited: std::time::Duration) -> Step {
        self.close(ResponseFrame::protocol_error(format!(
            "no `hello` within {}s of connecting",
            waited.as_secs()
        )))
    }

    fn close(&mut self, frame: ResponseFrame) -> Step {
        self.state = State::Closed;
        Step::Close(frame)
    }
}

fn protocol(message: String) -> AgentError {
    AgentError {
        kind: ErrorKind::Protocol,
        message,
        causes: vec![],
    }
}

impl Request {
    /// The request's `type`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Apply(_) => "apply",
            Request::ApplyPods(_) => "apply_pods",
            Request::Status { .. } => "status",
            Request::Logs(_) => "logs",
            Request::Exec(_) => "exec",
            Request::Remove { .. } => "remove",
            Request::ExecInput(_) => "exec_input",
            Request::Control(_) => "control",
            Request::Pull(_) => "pull",
            Request::Services(_) => "services",
            Request::BlobsWanted { .. } => "blobs_wanted",
            Request::BlobChunk(_) => "blob_chunk",
            Request::ImageCommit(_) => "image_commit",
            Request::Lock(_) => "lock",
            Request::Unlock { .. } => "unlock",
            Request::RecordRelease(_) => "record_release",
            Request::Releases { .. } => "releases",
            Request::ServicesHeld { .. } => "services_held",
            Request::Watch(_) => "watch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_is_one_line_and_older_agents_offer_no_capabilities() {
        let frame: RequestFrame = serde_json::from_str(
            r#"{"id":3,"type":"watch","project":"shop","since":17,"timeout_ms":5000}"#,
        )
        .expect("parses");
        assert_eq!(
            frame.request,
            Request::Watch(WatchRequest {
                project: "shop".into(),
                since: 17,
                timeout_ms: 5000,
            })
        );
        // A hello from an agent that predates capabilities: nothing offered, so polled.
        let facts: HostFacts = serde_json::from_str(
            r#"{"protocol_version":6,"agent_version":"0.1.0","arch":"x86_64","cpus":2,
                "memory":1,"kernel":"6","cgroup":"v1","hostname":"h","free_disk":1}"#,
        )
        .expect("parses");
        assert!(facts.capabilities.is_empty());
        // An apply answer without a change number (such an agent): 0.
        let report: ApplyReport =
            serde_json::from_str(r#"{"created":[],"replaced":[],"removed":[],"unchanged":[]}"#)
                .expect("parses");
        assert_eq!(report.changes, 0);
    }

    #[test]
    fn hello_round_trips_as_one_line() {
        let frame = RequestFrame {
            id: 0,
            request: Request::Hello {
                protocol_version: PROTOCOL_VERSION,
            },
        };
        let line = frame.to_line();
        assert_eq!(
            line,
            format!(r#"{{"id":0,"type":"hello","protocol_version":{PROTOCOL_VERSION}}}"#)
        );
        let back: RequestFrame = serde_json::from_str(&line).expect("parses");
        assert_eq!(back, frame);
    }

    #[test]
    fn apply_carries_the_host_network_and_pod_attachments() {
        let line = r#"{"id":1,"type":"apply","project":"p","pods":[{"name":"web-1","hostname":"web-1","spec_hash":"h","containers":[],"ports":[{"published":8080,"target":80,"protocol":"tcp"}],"network":{"mode":"fleet","networks":["front"]}}],"network":{"fleet":"10.213.0.0/16","subnet":"10.213.1.0/24","peers":[{"host":"h2","subnet":"10.213.2.0/24","via":"10.250.0.12"}]}}"#;
        let frame: RequestFrame = serde_json::from_str(line).expect("parses");
        let Request::Apply(apply) = &frame.request else {
            panic!("not an apply: {frame:?}");
        };
        let net = apply.network.as_ref().expect("a host network");
        assert_eq!(net.subnet.to_string(), "10.213.1.0/24");
        assert_eq!(net.peers[0].via.to_string(), "10.250.0.12");
        assert_eq!(apply.pods[0].network.networks, ["front"]);
        assert_eq!(frame.to_line(), line, "serializes back to the same line");
        // A pod without a `network` joins the fleet network; `none` keeps loopback only.
        let pod: PodSpec = serde_json::from_str(
            r#"{"name":"a","hostname":"a","spec_hash":"h","containers":[],"network":{"mode":"none"}}"#,
        )
        .expect("parses");
        assert_eq!(pod.network.mode, NetworkMode::None);
        assert_eq!(PodNetwork::default().mode, NetworkMode::Fleet);
        // A host subnet must be a prefix with its host bits clear.
        assert!(serde_json::from_str::<HostNetwork>(
            r#"{"fleet":"10.213.0.0/16","subnet":"10.213.1.7/24"}"#
        )
        .is_err());
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

    fn hello(version: u32) -> Vec<u8> {
        format!(r#"{{"id":0,"type":"hello","protocol_version":{version}}}"#).into_bytes()
    }

    #[test]
    fn hello_first_then_requests_are_served() {
        let mut c = ServerConnection::new("t");
        assert_eq!(c.max_line_bytes(), MAX_HELLO_LINE_BYTES);
        assert_eq!(c.on_line(b"  "), Step::Skip);
        assert_eq!(c.on_line(&hello(PROTOCOL_VERSION)), Step::Hello { id: 0 });
        assert_eq!(c.max_line_bytes(), MAX_LINE_BYTES);
        let step = c.on_line(br#"{"id":1,"type":"status","project":null}"#);
        assert!(
            matches!(step, Step::Serve(RequestFrame { id: 1, .. })),
            "{step:?}"
        );
    }

    #[test]
    fn a_request_before_hello_closes_with_a_protocol_error_under_its_id() {
        let mut c = ServerConnection::new("t");
        let Step::Close(frame) = c.on_line(br#"{"id":4,"type":"status","project":null}"#) else {
            panic!("not closed")
        };
        assert_eq!(frame.id, Some(4));
        let err = frame.err.expect("an error");
        assert_eq!(err.kind, ErrorKind::Protocol);
        assert!(err.message.contains("`status` before `hello`"), "{err}");
        assert!(c.is_closed());
        assert_eq!(c.on_line(&hello(PROTOCOL_VERSION)), Step::Skip);
    }

    #[test]
    fn a_version_mismatch_closes() {
        let mut c = ServerConnection::new("9.9");
        let Step::Close(frame) = c.on_line(&hello(PROTOCOL_VERSION + 1)) else {
            panic!("not closed")
        };
        let err = frame.err.expect("an error");
        assert_eq!(err.kind, ErrorKind::VersionMismatch);
        assert_eq!(err.causes, ["agent version 9.9"]);
        assert_eq!(
            c.on_line(br#"{"id":1,"type":"status","project":null}"#),
            Step::Skip
        );
    }

    #[test]
    fn a_line_that_does_not_parse_gets_an_error_without_id_and_closes() {
        for line in [
            &b"not json"[..],
            b"{\"id\":3,\"type\":\"nope\"}",
            b"\xff\xfe",
        ] {
            for ready in [false, true] {
                let mut c = ServerConnection::new("t");
                if ready {
                    c.on_line(&hello(PROTOCOL_VERSION));
                }
                let Step::Close(frame) = c.on_line(line) else {
                    panic!("not closed")
                };
                assert_eq!(frame.id, None);
                assert_eq!(frame.err.map(|e| e.kind), Some(ErrorKind::Protocol));
                let wire = ResponseFrame::protocol_error("x").to_line();
                assert!(!wire.contains("\"id\""), "{wire}");
            }
        }
    }

    #[test]
    fn a_second_hello_closes() {
        let mut c = ServerConnection::new("t");
        c.on_line(&hello(PROTOCOL_VERSION));
        assert!(matches!(
            c.on_line(&hello(PROTOCOL_VERSION)),
            Step::Close(_)
        ));
    }

    #[test]
    fn the_line_buffer_refuses_a_long_line_before_buffering_it() {
        let mut b = LineBuffer::new(4);
        assert_eq!(b.feed(b"ab"), Ok((2, None)));
        assert_eq!(b.feed(b"cd\nef"), Ok((3, Some(b"abcd".to_vec()))));
        assert_eq!(b.feed(b"ef"), Ok((2, None)));
        assert_eq!(b.finish(), Some(b"ef".to_vec()));
        assert_eq!(b.feed(b"abcde"), Err(LineTooLong { max: 4 }));
        assert_eq!(b.line.capacity(), 0, "nothing of the long line was kept");
    }
}
