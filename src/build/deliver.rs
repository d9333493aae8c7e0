//! Delivering built images to hosts over the agent's channel, no registry: ask the agent which
//! blobs it lacks, stream only those in chunks (resuming at the offset a partial file holds),
//! then send the manifest last. The agent verifies each blob (digest and size) before it is
//! stored and each layer (diff_id) before it is unpacked.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::store::LocalStore;
use super::LocalImage;
use crate::deploy::exec::HostConn;
use crate::proto::{BlobChunk, ImageCommit, Request, Response};

/// Bytes per chunk request: large enough that the round trips do not dominate, small enough that
/// a line stays far below the protocol's limit and neither side holds much.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What one image's delivery to one host did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivered {
    pub host: String,
    pub reference: String,
    /// Blobs the host lacked (config and layers) and were sent.
    pub blobs_sent: usize,
    /// Blob bytes sent by this CLI (after any resume offset).
    pub bytes_sent: u64,
    /// Blob bytes the agent reports it received for this image.
    pub bytes_received: u64,
    pub layers_unpacked: u32,
    pub elapsed: Duration,
}

/// Delivers `image` to the host behind `conn`; `timeout` bounds each request.
pub async fn deliver(
    conn: &HostConn,
    store: &LocalStore,
    image: &LocalImage,
    timeout: Duration,
) -> Result<Delivered, String> {
    let started = Instant::now();
    let host = conn.name.clone();
    let fail = |what: String| format!("{host}: delivering {}: {what}", image.reference);
    let (body, manifest) = store
        .manifest(&image.built.manifest)
        .map_err(|e| fail(e.to_string()))?;
    let digests: Vec<String> = manifest.blobs().map(|b| b.digest.clone()).collect();
    let missing = match conn
        .call(Request::BlobsWanted { digests }, timeout)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        Response::BlobsWanted { missing } => missing,
        other => return Err(fail(format!("unexpected answer {other:?}"))),
    };
    let mut out = Delivered {
        host: host.clone(),
        reference: image.reference.clone(),
        ..Delivered::default()
    };
    for wanted in &missing {
        let size = manifest
            .blobs()
            .find(|b| b.digest == wanted.digest)
            .map(|b| b.size)
            .ok_or_else(|| {
                fail(format!(
                    "the agent asked for {}, not in the image",
                    wanted.digest
                ))
            })?;
        let path = store
            .blob_path(&wanted.digest)
            .ok_or_else(|| fail(format!("bad digest {}", wanted.digest)))?;
        let mut file = std::fs::File::open(&path)
            .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
        let mut offset = if wanted.offset < size {
            wanted.offset
        } else {
            0
        };
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
            let want = CHUNK_BYTES.min((size - offset) as usize);
            let mut n = 0;
            while n < want {
                let r = file
                    .read(&mut buf[n..want])
                    .map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
                if r == 0 {
                    break;
                }
                n += r;
            }
            let chunk = BlobChunk {
                digest: wanted.digest.clone(),
                size,
                offset,
                data_b64: base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
            };
            let (next, complete) = match conn
                .call(Request::BlobChunk(chunk), timeout)
                .await
                .map_err(|e| fail(e.to_string()))?
            {
                Response::BlobChunk {
                    offset, complete, ..
                } => (offset, complete),
                other => return Err(fail(format!("unexpected answer {other:?}"))),
            };
            out.bytes_sent += n as u64;
            if complete {
                break;
            }
            if n == 0 && next == offset {
                return Err(fail(format!(
                    "{} in the local store is shorter than its manifest says; build again",
                    path.display()
                )));
            }
            offset = next;
        }
        out.blobs_sent += 1;
    }
    let commit = ImageCommit {
        reference: image.reference.clone(),
        digest: image.built.manifest.clone(),
        manifest_b64: base64::engine::general_purpose::STANDARD.encode(&body),
        tags: image.built.tags.clone(),
    };
    match conn
        .call(Request::ImageCommit(commit), timeout)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        Response::ImageCommitted(c) => {
            out.bytes_received = c.bytes_received;
            out.layers_unpacked = c.layers_unpacked;
        }
        other => return Err(fail(format!("unexpected answer {other:?}"))),
    }
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Refuses, before anything is sent, a built image whose architecture differs from a host that
/// would run it: builds are for this machine's architecture (`build.platforms` is not passed to
/// builders yet), and a host cannot run another's binaries. Pure.
pub fn check_architectures(
    desired: &crate::deploy::desired::Desired,
    images: &[LocalImage],
    facts: &crate::plan::Facts,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (host, pods) in &desired.hosts {
        let Some(host_arch) = facts.get(host).map(|f| f.arch.as_str()) else {
            continue;
        };
        for image in images {
            let runs = pods.iter().any(|p| p.images.contains(&image.reference));
            let arch = image.built.architecture.as_str();
            if runs && !arch.is_empty() && super::oci_arch(host_arch) != arch {
                problems.push(format!(
                    "service `{}` was built for {arch}, but host `{host}` is {host_arch}",
                    image.service
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}\nhint: the builder here builds for {}; build on a machine of the hosts' architecture, or place the service on hosts of this one (nothing was sent)",
        problems.join("\n"),
        super::oci_arch(std::env::consts::ARCH)
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
    timeout: Duration,
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
        let store = store.clone();
        set.spawn(async move {
            let mut done = Vec::new();
            for image in &wanted {
                done.push(deliver(&conn, &store, image, timeout).await?);
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
        let facts: crate::plan::Facts = [("pi", "aarch64"), ("x86", "x86_64")]
            .into_iter()
            .map(|(h, a)| {
                (
                    h.to_string(),
                    crate::plan::HostFacts {
                        cpus: 1.0,
                        memory: 1 << 30,
                        arch: a.into(),
                    },
                )
            })
            .collect();
        let image = LocalImage {
            service: "web".into(),
            reference: reference.clone(),
            built: BuiltRef {
                manifest: "sha256:ab".into(),
                tags: vec![],
                architecture: "amd64".into(),
            },
        };
        let err = check_architectures(&desired, std::slice::from_ref(&image), &facts)
            .expect_err("refused");
        assert!(
            err.starts_with("service `web` was built for amd64, but host `pi` is aarch64"),
            "{err}"
        );
        assert!(!err.contains("`x86`"), "{err}");
        desired.hosts.remove("pi");
        assert!(check_architectures(&desired, &[image], &facts).is_ok());
    }
}
