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
