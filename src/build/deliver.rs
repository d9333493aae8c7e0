//! Delivering built images to hosts over the agent's channel, no registry: ask the agent which
//! blobs it lacks, stream only those in chunks (resuming at the offset a partial file holds),
//! then send the manifest last. A channel that drops is reopened within the run ([`Reconnect`])
//! and the delivery resumes where the host stands; each host gets its architecture's image of a
//! multi-platform build. The agent verifies each blob (digest and size) before it is
//! stored and each layer (diff_id) before it is unpacked.
//!
//! Hosts are served in parallel, each with a window of chunk requests in flight (the round trips
//! overlap; the agent writes them in order); uncompressed layers travel gzip-compressed chunk by
//! chunk; `--max-upload-rate` paces every host's chunks through one token bucket
//! ([`super::rate`]); bytes per host and image are reported as they go ([`super::progress`]).

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::stream::{FuturesOrdered, StreamExt as _};

use super::progress::DeliveryProgress;
use super::rate::RateLimit;
use super::store::LocalStore;
use super::LocalImage;
use crate::deploy::exec::HostConn;
use crate::proto::{BlobChunk, ImageCommit, Request, Response};

/// Blob bytes per chunk request: large enough that per-request costs (a JSON line, a task on the
/// agent) stay small, small enough that a line stays far below the protocol's limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunk requests in flight per host: the round trips overlap instead of adding up (one 1 MiB
/// chunk per round trip caps a 50 ms link at 20 MB/s; four in flight, at 80 MB/s), and what either
/// side holds stays bounded (about `WINDOW` × 2.7 MiB per host on the CLI: the bytes, their base64
/// and its JSON line). On the lab, where a round trip costs nothing, 8 was no faster than 1 and
/// took 30 MB more memory for 3 hosts.
pub const WINDOW: usize = 4;

/// Chunk requests in flight for the whole run, all hosts together: what the CLI holds stays
/// bounded however many hosts there are (10 hosts × a window of 8 took 190 MB).
pub const MAX_IN_FLIGHT: usize = 24;

/// Media types of layers stored uncompressed (legacy `docker save`, some OCI exporters): they
/// travel gzip-compressed, chunk by chunk, and the host verifies the uncompressed bytes.
const UNCOMPRESSED_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// How a run delivers: per-request deadline, the upload limit shared by every host, progress.
#[derive(Clone)]
pub struct Options {
    pub timeout: Duration,
    /// `--max-upload-rate`: one bucket for the whole run (all hosts together).
    pub rate: Option<Arc<Mutex<RateLimit>>>,
    pub progress: Arc<DeliveryProgress>,
    /// Chunk requests in flight per host ([`WINDOW`]).
    pub window: usize,
    /// Blob bytes per chunk ([`CHUNK_BYTES`]).
    pub chunk_bytes: usize,
    /// Permits for chunks in flight, shared by every host ([`MAX_IN_FLIGHT`]).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// How a host whose channel drops mid-delivery is reached again; `None`: it is not (the
    /// next run resumes).
    pub reconnect: Option<Arc<Reconnect>>,
}

/// Reopening a dropped channel within the run: a fresh SSH session and agent handshake, up to
/// `attempts` times per image and host, waiting `backoff`, then twice as long each time. The
/// delivery then asks the host again what it lacks and resumes each blob at the offset the host
/// holds, so the bytes already sent are not sent again.
pub struct Reconnect {
    pub targets: std::collections::BTreeMap<String, crate::ssh::SshTarget>,
    pub ssh: crate::ssh::Options,
    pub attempts: u32,
    pub backoff: Duration,
}

impl Reconnect {
    /// Reconnects to the hosts of `fleet` with `ssh`: 4 attempts, 1 s, 2 s, 4 s, 8 s apart.
    pub fn new(fleet: &crate::inventory::Fleet, ssh: crate::ssh::Options) -> Reconnect {
        Reconnect {
            targets: crate::ssh::SshTarget::all(fleet)
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
            ssh,
            attempts: 4,
            backoff: Duration::from_secs(1),
        }
    }
}

impl Options {
    /// The defaults, except that `COMPOSE_FLEET_DELIVERY_WINDOW` and
    /// `COMPOSE_FLEET_DELIVERY_CHUNK` (bytes, at most the protocol's chunk limit) override the
    /// window and the chunk size: the delivery benchmark compares settings with them.
    pub fn new(
        timeout: Duration,
        max_upload_rate: Option<u64>,
        progress: DeliveryProgress,
    ) -> Options {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        Options {
            timeout,
            rate: max_upload_rate.map(|r| Arc::new(Mutex::new(RateLimit::new(r)))),
            progress: Arc::new(progress),
            window: env("COMPOSE_FLEET_DELIVERY_WINDOW")
                .unwrap_or(WINDOW)
                .clamp(1, 64),
            chunk_bytes: env("COMPOSE_FLEET_DELIVERY_CHUNK")
                .unwrap_or(CHUNK_BYTES)
                .clamp(4096, crate::proto::MAX_CHUNK_BYTES),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            reconnect: None,
        }
    }
}

/// What one image's delivery to one host did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivered {
    pub host: String,
    pub reference: String,
    /// Blobs the host lacked (config and layers) and were sent.
    pub blobs_sent: usize,
    /// Blob bytes sent by this CLI (after any resume offset) that the host kept.
    pub bytes_sent: u64,
    /// Bytes those blob bytes took on the wire (compressed where a layer is not), before base64.
    pub wire_bytes: u64,
    /// Blob bytes the agent reports it received for this image.
    pub bytes_received: u64,
    pub layers_unpacked: u32,
    pub elapsed: Duration,
    /// Times the channel dropped and was reopened during this delivery.
    pub reconnects: u32,
}

/// Why a delivery attempt stopped: the message, and whether the channel dropped (worth
/// reconnecting) rather than the host refusing something.
struct Stopped {
    message: String,
    lost: bool,
}

/// Whether an error of the channel means it is gone (not a refusal by the agent).
fn lost(e: &crate::ssh::SshError) -> bool {
    matches!(
        e.class,
        crate::ssh::ErrorClass::Unreachable | crate::ssh::ErrorClass::Timeout
    )
}

/// Delivers `image` to the host behind `conn`, whose architecture is `arch` (the image's variant
/// for it, when built for several); `opts.timeout` bounds each request. A channel that drops is
/// reopened as [`Options::reconnect`] says and the delivery resumes where the host stands.
pub async fn deliver(
    conn: &HostConn,
    store: &LocalStore,
    image: &LocalImage,
    arch: &str,
    opts: &Options,
) -> Result<Delivered, String> {
    let started = Instant::now();
    let mut out = Delivered {
        host: conn.name.clone(),
        reference: image.reference.clone(),
        ..Delivered::default()
    };
    let mut attempt = 0;
    loop {
        match deliver_once(conn, store, image, arch, opts, &mut out).await {
            Ok(()) => break,
            Err(stopped) => {
                let again = opts
                    .reconnect
                    .as_ref()
                    .filter(|r| stopped.lost && attempt < r.attempts);
                let Some(reconnect) = again else {
                    return Err(stopped.message);
                };
                let Some(target) = reconnect.targets.get(&conn.name) else {
                    return Err(stopped.message);
                };
                let mut wait = reconnect.backoff * 2u32.saturating_pow(attempt);
                // Reconnecting itself may fail (the host is still away): that costs an attempt.
                loop {
                    attempt += 1;
                    crate::output::warning(&format!(
                        "{}: the channel dropped while delivering {} ({}); reconnecting in {:.0}s (attempt {attempt} of {})",
                        conn.name,
                        image.reference,
                        stopped.message,
                        wait.as_secs_f64(),
                        reconnect.attempts
                    ));
                    tokio::time::sleep(wait).await;
                    match crate::deploy::exec::open_host(target, &reconnect.ssh).await {
                        Ok(fresh) => {
                            conn.adopt(fresh);
                            out.reconnects += 1;
                            break;
                        }
                        Err(e) if attempt < reconnect.attempts => {
                            wait *= 2;
                            let _ = e;
                        }
                        Err(e) => {
                            return Err(format!(
                                "{}\n{}: reconnecting failed {attempt} times, the last: {e}; run the command again (it resumes)",
                                stopped.message, conn.name
                            ))
                        }
                    }
                }
            }
        }
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// One attempt: ask what the host lacks, send it (from the offsets it holds), commit.
async fn deliver_once(
    conn: &HostConn,
    store: &LocalStore,
    image: &LocalImage,
    arch: &str,
    opts: &Options,
    out: &mut Delivered,
) -> Result<(), Stopped> {
    let host = conn.name.clone();
    let fail = |what: String| Stopped {
        message: format!("{host}: delivering {}: {what}", image.reference),
        lost: false,
    };
    let failed = |e: crate::ssh::SshError| Stopped {
        lost: lost(&e),
        message: format!("{host}: delivering {}: {e}", image.reference),
    };
    let digest = image.built.manifest_for(arch).ok_or_else(|| {
        fail(format!(
            "no image was built for {arch} (built: {})",
            image.built.architectures().join(", ")
        ))
    })?;
    let (body, manifest) = store.manifest(digest).map_err(|e| fail(e.to_string()))?;
    let digests: Vec<String> = manifest.blobs().map(|b| b.digest.clone()).collect();
    let missing = match conn
        .call(Request::BlobsWanted { digests }, opts.timeout)
        .await
        .map_err(failed)?
    {
        Response::BlobsWanted { missing } => missing,
        other => return Err(fail(format!("unexpected answer {other:?}"))),
    };
    let mut blobs = Vec::new();
    for wanted in &missing {
        let desc = manifest
            .blobs()
            .find(|b| b.digest == wanted.digest)
            .ok_or_else(|| {
                fail(format!(
                    "the agent asked for {}, not in the image",
                    wanted.digest
                ))
            })?;
        let offset = if wanted.offset < desc.size {
            wanted.offset
        } else {
            0
        };
        blobs.push((desc, offset));
    }
    let total = blobs.iter().map(|(d, offset)| d.size - offset).sum();
    opts.progress.start(&host, &image.reference, total);
    let dropped = std::sync::atomic::AtomicBool::new(false);
    let sent = send_blobs(conn, store, image, &blobs, opts, out, &dropped).await;
    opts.progress.finish(&host, &image.reference);
    sent.map_err(|e| Stopped {
        lost: dropped.load(std::sync::atomic::Ordering::Relaxed),
        message: format!("{host}: delivering {}: {e}", image.reference),
    })?;
    // The reference names the index of a multi-platform build; the host records it as this
    // platform's manifest, as it does for a list pulled from a registry.
    let commit = ImageCommit {
        reference: image.reference.clone(),
        digest: digest.to_string(),
        manifest_b64: base64::engine::general_purpose::STANDARD.encode(&body),
        tags: image.built.tags.clone(),
    };
    match conn
        .call(Request::ImageCommit(commit), opts.timeout)
        .await
        .map_err(failed)?
    {
        Response::ImageCommitted(c) => {
            // Bytes received count since the host last committed these blobs: every attempt's.
            out.bytes_received = c.bytes_received;
            out.layers_unpacked = c.layers_unpacked;
        }
        other => return Err(fail(format!("unexpected answer {other:?}"))),
    }
    Ok(())
}

async fn send_blobs(
    conn: &HostConn,
    store: &LocalStore,
    image: &LocalImage,
    blobs: &[(&super::store::Descriptor, u64)],
    opts: &Options,
    out: &mut Delivered,
    dropped: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    for (desc, offset) in blobs {
        let path = store
            .blob_path(&desc.digest)
            .ok_or_else(|| format!("bad digest {}", desc.digest))?;
        let file =
            std::fs::File::open(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let blob = Blob {
            file: Arc::new(file),
            path: &path,
            digest: &desc.digest,
            size: desc.size,
            compress: UNCOMPRESSED_LAYERS.contains(&desc.media_type.as_str()),
        };
        let timeout = opts.timeout;
        let call = |chunk: BlobChunk| async move {
            conn.call(Request::BlobChunk(chunk), timeout)
                .await
                .map_err(|e| {
                    if lost(&e) {
                        dropped.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    e.to_string()
                })
        };
        let to = (conn.name.as_str(), image.reference.as_str());
        send_blob(call, &blob, *offset, to, opts, out).await?;
        out.blobs_sent += 1;
    }
    Ok(())
}

/// One blob of the local store being sent.
struct Blob<'a> {
    file: Arc<std::fs::File>,
    path: &'a Path,
    digest: &'a str,
    size: u64,
    compress: bool,
}

/// Sends one blob from `start`, up to `opts.window` chunks in flight. The host writes only a prefix
/// (a chunk handled early waits its turn); when it answers with another offset than the one a
/// chunk ends at (a chunk lost, a partial file changed under us) the rest is resent from there.
///
/// `call` sends one chunk request and returns the host's answer; `to` is (host, image reference)
/// for progress.
async fn send_blob<C, F>(
    call: C,
    blob: &Blob<'_>,
    start: u64,
    to: (&str, &str),
    opts: &Options,
    out: &mut Delivered,
) -> Result<(), String>
where
    C: Fn(BlobChunk) -> F,
    F: std::future::Future<Output = Result<Response, String>>,
{
    // How often the host may answer out of step before we give up on it.
    const MAX_RESTARTS: u32 = 16;
    let mut next = start;
    let mut sent_any = false;
    let mut restarts = 0;
    let mut in_flight = FuturesOrdered::new();
    loop {
        // Fill the window (a blob of 0 bytes is one empty chunk).
        while in_flight.len() < opts.window && (next < blob.size || !sent_any) {
            // A host with nothing in flight waits for a permit; one with chunks in flight takes
            // one only if free (it holds permits that only its own replies give back: waiting
            // there could leave every host waiting on the others).
            let permit = if in_flight.is_empty() {
                opts.in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| format!("delivery stopped: {e}"))?
            } else {
                match opts.in_flight.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            let len = opts.chunk_bytes.min((blob.size - next) as usize);
            let (file, digest, size, compress) = (
                blob.file.clone(),
                blob.digest.to_string(),
                blob.size,
                blob.compress,
            );
            let offset = next;
            let (chunk, wire) = tokio::task::spawn_blocking(move || {
                encode(&file, digest, size, offset, len, compress)
            })
            .await
            .map_err(|e| format!("encoding a chunk failed: {e}"))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => format!(
                    "{} in the local store is shorter than its manifest says; build again",
                    blob.path.display()
                ),
                _ => format!("reading {}: {e}", blob.path.display()),
            })?;
            if let Some(rate) = &opts.rate {
                let wait = rate
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(chunk.data_b64.len() as u64, Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let reply = call(chunk);
            in_flight.push_back(async move {
                let reply = reply.await;
                drop(permit);
                (offset, len as u64, wire, reply)
            });
            next += len as u64;
            sent_any = true;
        }
        let Some((offset, len, wire, reply)) = in_flight.next().await else {
            return Err(format!(
                "blob {} did not complete at {} bytes",
                blob.digest, blob.size
            ));
        };
        let (held, complete) = match reply? {
            Response::BlobChunk {
                offset, complete, ..
            } => (offset, complete),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        if complete || held == offset + len {
            out.bytes_sent += len;
            out.wire_bytes += wire;
            opts.progress.sent(to.0, to.1, len);
        }
        if complete {
            return Ok(());
        }
        if held != offset + len {
            restarts += 1;
            if restarts > MAX_RESTARTS || held > blob.size {
                return Err(format!(
                    "the host answered offset {held} for a chunk of blob {} at {offset} \
                     ({restarts} times out of step); run the command again (it resumes)",
                    blob.digest
                ));
            }
            // The chunks still in flight are abandoned (their replies are dropped); the host
            // handles them harmlessly: same bytes, same offsets.
            in_flight = FuturesOrdered::new();
            next = held;
        }
    }
}

/// Reads `len` bytes at `offset` and makes them a chunk: gzip-compressed when asked and smaller.
/// Returns the chunk and the bytes its data takes before base64.
fn encode(
    file: &std::fs::File,
    digest: String,
    size: u64,
    offset: u64,
    len: usize,
    compress: bool,
) -> std::io::Result<(BlobChunk, u64)> {
    use std::io::Write as _;
    let mut data = vec![0u8; len];
    file.read_exact_at(&mut data, offset)?;
    let mut encoding = None;
    if compress && len > 0 {
        let mut gz =
            flate2::write::GzEncoder::new(Vec::with_capacity(len / 2), flate2::Compression::fast());
        gz.write_all(&data)?;
        let packed = gz.finish()?;
        if packed.len() < len {
            data = packed;
            encoding = Some("gzip".to_string());
        }
    }
    let wire = data.len() as u64;
    Ok((
        BlobChunk {
            digest,
            size,
            offset,
            data_b64: base64::engine::general_purpose::STANDARD.encode(&data),
            encoding,
        },
        wire,
    ))
}

/// A host's architecture as delivery sees it: the inventory's `arch` where declared, else what
/// the host reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostArch {
    /// `uname -m` spelling.
    pub arch: String,
    /// Whether the inventory declares it (said when it is refused).
    pub declared: bool,
}

/// Every reachable host's architecture: the inventory's where declared, else the facts'.
pub fn host_arches(
    fleet: &crate::inventory::Fleet,
    facts: &crate::plan::Facts,
) -> std::collections::BTreeMap<String, HostArch> {
    fleet
        .hosts
        .iter()
        .filter_map(|h| {
            let arch = match &h.arch {
                Some(a) => HostArch {
                    arch: a.clone(),
                    declared: true,
                },
                None => HostArch {
                    arch: crate::inventory::normalize_arch(&facts.get(&h.name)?.arch),
                    declared: false,
                },
            };
            Some((h.name.clone(), arch))
        })
        .collect()
}

/// Refuses, before anything is sent, a built image that has no variant for the architecture of
/// a host that would run it (a host cannot run another's binaries), naming each such host and
/// its architecture. Pure.
pub fn check_architectures(
    desired: &crate::deploy::desired::Desired,
    images: &[LocalImage],
    arches: &std::collections::BTreeMap<String, HostArch>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (host, pods) in &desired.hosts {
        let Some(host_arch) = arches.get(host) else {
            continue;
        };
        for image in images {
            let runs = pods.iter().any(|p| p.images.contains(&image.reference));
            if runs && image.built.manifest_for(&host_arch.arch).is_none() {
                problems.push(format!(
                    "service `{}` was built for {}, but host `{host}` is {}{}",
                    image.service,
                    image.built.architectures().join(", "),
                    host_arch.arch,
                    if host_arch.declared {
                        " (the inventory says so)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}\nhint: a build covers the hosts' architectures (`arch:` in the inventory, else what \
         each host reports) and those in `build.platforms`, when the builder here can produce \
         them (an emulator such as qemu-user-static lets it; `up --build` builds again); or keep \
         the service off these hosts with `platform:` (nothing was sent)",
        problems.join("\n"),
    ))
}

/// Delivers each built image to the hosts whose desired pods run it, hosts in parallel (one
/// host's images one after another, over its one connection). Returns every delivery, or the
/// first failure (the others still finish: a host never gets half a request).
pub async fn deliver_all(
    hosts: &std::collections::BTreeMap<String, std::sync::Arc<HostConn>>,
    desired: &crate::deploy::desired::Desired,
    images: &[LocalImage],
    store: &LocalStore,
    arches: &std::collections::BTreeMap<String, HostArch>,
    opts: &Options,
) -> Result<Vec<Delivered>, String> {
    let mut set = tokio::task::JoinSet::new();
    for (host, pods) in &desired.hosts {
        let wanted: Vec<LocalImage> = images
            .iter()
            .filter(|i| pods.iter().any(|p| p.images.contains(&i.reference)))
            .cloned()
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let Some(conn) = hosts.get(host).cloned() else {
            continue;
        };
        let arch = arches
            .get(host)
            .map_or_else(|| std::env::consts::ARCH.to_string(), |a| a.arch.clone());
        let store = store.clone();
        let opts = opts.clone();
        set.spawn(async move {
            let mut done = Vec::new();
            for image in &wanted {
                done.push(deliver(&conn, &store, image, &arch, &opts).await?);
            }
            Ok::<_, String>(done)
        });
    }
    let mut all = Vec::new();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(done)) => all.extend(done),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a delivery task failed: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            all.sort_by(|a, b| (&a.host, &a.reference).cmp(&(&b.host, &b.reference)));
            Ok(all)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::BuiltRef;
    use crate::deploy::desired::{Desired, DesiredPod};

    #[test]
    fn an_image_built_for_another_architecture_is_refused_naming_the_host() {
        let reference = "localhost/app-web@sha256:ab".to_string();
        let pod = |host: &str| DesiredPod {
            name: "web-1".into(),
            host: host.into(),
            spec_hash: String::new(),
            containers: vec![],
            healthchecked: Default::default(),
            images: vec![reference.clone()],
            spec: crate::proto::PodSpec {
                name: "web-1".into(),
                hostname: "web-1".into(),
                spec_hash: String::new(),
                containers: vec![],
                ports: vec![],
                network: Default::default(),
            },
        };
        let mut desired = Desired::default();
        desired.hosts.insert("pi".into(), vec![pod("pi")]);
        desired.hosts.insert("x86".into(), vec![pod("x86")]);
        let arches: std::collections::BTreeMap<String, HostArch> =
            [("pi", "aarch64", true), ("x86", "x86_64", false)]
                .into_iter()
                .map(|(h, a, declared)| {
                    (
                        h.to_string(),
                        HostArch {
                            arch: a.into(),
                            declared,
                        },
                    )
                })
                .collect();
        let mut image = LocalImage {
            service: "web".into(),
            reference: reference.clone(),
            built: BuiltRef {
                manifest: "sha256:ab".into(),
                architecture: "amd64".into(),
                ..BuiltRef::default()
            },
            push_to: None,
        };
        let err = check_architectures(&desired, std::slice::from_ref(&image), &arches)
            .expect_err("refused");
        assert!(
            err.starts_with(
                "service `web` was built for amd64, but host `pi` is aarch64 (the inventory says so)"
            ),
            "{err}"
        );
        assert!(err.contains("nothing was sent"), "{err}");
        assert!(!err.contains("`x86`"), "{err}");
        // Built for both: each host has its variant.
        image.built = BuiltRef {
            manifest: "sha256:1d".into(),
            variants: vec![
                crate::build::Variant {
                    architecture: "amd64".into(),
                    manifest: "sha256:a1".into(),
                },
                crate::build::Variant {
                    architecture: "arm64".into(),
                    manifest: "sha256:a2".into(),
                },
            ],
            ..BuiltRef::default()
        };
        assert!(check_architectures(&desired, std::slice::from_ref(&image), &arches).is_ok());
        assert_eq!(image.built.manifest_for("aarch64"), Some("sha256:a2"));
        assert_eq!(image.built.manifest_for("x86_64"), Some("sha256:a1"));
        assert_eq!(image.built.manifest_for("riscv64"), None);
        image.built.variants.pop();
        let err = check_architectures(&desired, std::slice::from_ref(&image), &arches)
            .expect_err("refused");
        assert!(err.contains("host `pi` is aarch64"), "{err}");
        desired.hosts.remove("pi");
        assert!(check_architectures(&desired, &[image], &arches).is_ok());
    }

    /// Figures, not a check: what one chunk costs the CLI before it reaches SSH (read, base64,
    /// the JSON line), in this build's profile.
    /// `cargo test -p compose-fleet --lib chunk_cost_figures -- --ignored --nocapture`
    #[test]
    #[ignore = "prints figures"]
    fn chunk_cost_figures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let mut x = 1u64;
        let bytes: Vec<u8> = (0..CHUNK_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let rounds = 50;
        let started = Instant::now();
        let mut chunks = Vec::new();
        for _ in 0..rounds {
            chunks.push(
                encode(
                    &file,
                    "sha256:00".into(),
                    bytes.len() as u64,
                    0,
                    bytes.len(),
                    false,
                )
                .expect("encode")
                .0,
            );
        }
        let encode_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut line_bytes = 0;
        for (id, chunk) in chunks.into_iter().enumerate() {
            line_bytes += crate::proto::RequestFrame {
                id: id as u64,
                request: Request::BlobChunk(chunk),
            }
            .to_line()
            .len();
        }
        let line_s = started.elapsed().as_secs_f64();
        let mb = (rounds * CHUNK_BYTES) as f64 / 1e6;
        eprintln!(
            "figure: read + base64 {:.0} MB/s, JSON line {:.0} MB/s ({} bytes a line)",
            mb / encode_s,
            mb / line_s,
            line_bytes / rounds
        );
    }

    /// A host holding a prefix of one blob, as the agent does: a chunk at its length is
    /// appended, one elsewhere is answered with the length. It loses the chunks whose offsets are
    /// in `lose` once each (as a cut connection would), answering as if it never saw them.
    struct FakeHost {
        held: std::sync::Mutex<Vec<u8>>,
        lose: std::sync::Mutex<Vec<u64>>,
        size: u64,
    }

    impl FakeHost {
        fn answer(&self, chunk: BlobChunk) -> Result<Response, String> {
            let data = base64::engine::general_purpose::STANDARD
                .decode(&chunk.data_b64)
                .map_err(|e| e.to_string())?;
            let mut held = self.held.lock().expect("held");
            let mut lose = self.lose.lock().expect("lose");
            if let Some(i) = lose.iter().position(|&o| o == chunk.offset) {
                lose.remove(i);
            } else if chunk.offset == held.len() as u64 {
                held.extend_from_slice(&data);
            }
            Ok(Response::BlobChunk {
                digest: chunk.digest,
                offset: held.len() as u64,
                complete: held.len() as u64 == self.size,
            })
        }
    }

    #[tokio::test]
    async fn a_chunk_lost_in_the_window_is_resent_from_the_offset_the_host_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        let host = FakeHost {
            // 4,096-byte chunks: the one at 8,192 and, later, the one at 40,960 are lost.
            held: std::sync::Mutex::new(bytes[..4096].to_vec()),
            lose: std::sync::Mutex::new(vec![8192, 40_960]),
            size: bytes.len() as u64,
        };
        let mut opts = Options::new(Duration::from_secs(5), None, DeliveryProgress::quiet());
        opts.chunk_bytes = 4096;
        opts.window = 4;
        let blob = Blob {
            file: Arc::new(std::fs::File::open(&path).expect("open")),
            path: &path,
            digest: "sha256:00",
            size: bytes.len() as u64,
            compress: false,
        };
        let mut out = Delivered::default();
        let call = |chunk: BlobChunk| {
            let answer = host.answer(chunk);
            async move { answer }
        };
        send_blob(call, &blob, 4096, ("h", "r"), &opts, &mut out)
            .await
            .expect("delivered");
        assert_eq!(
            *host.held.lock().expect("held"),
            bytes,
            "the host has the blob"
        );
        assert_eq!(
            out.bytes_sent,
            bytes.len() as u64 - 4096,
            "only the chunks the host kept count, each once"
        );
        assert_eq!(
            opts.in_flight.available_permits(),
            MAX_IN_FLIGHT,
            "every permit came back"
        );
    }

    #[tokio::test]
    async fn a_host_that_never_advances_is_given_up_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; 10_000]).expect("write");
        let opts = Options::new(Duration::from_secs(5), None, DeliveryProgress::quiet());
        let blob = Blob {
            file: Arc::new(std::fs::File::open(&path).expect("open")),
            path: &path,
            digest: "sha256:00",
            size: 10_000,
            compress: false,
        };
        let call = |chunk: BlobChunk| async move {
            Ok(Response::BlobChunk {
                digest: chunk.digest,
                offset: 0,
                complete: false,
            })
        };
        let err = send_blob(call, &blob, 0, ("h", "r"), &opts, &mut Delivered::default())
            .await
            .expect_err("gives up");
        assert!(err.contains("times out of step"), "{err}");
    }
}
