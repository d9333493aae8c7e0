//! Receiving images the CLI built, blob by blob over the agent's own channel: no registry.
//!
//! The CLI asks which blobs are missing ([`ImageStore::wanted`]), streams each in chunks
//! ([`ImageStore::receive_chunk`]) and sends the manifest last ([`ImageStore::commit`]). A chunk
//! is appended to `blobs/sha256/<hex>.partial` (the same file a registry pull resumes), so a cut
//! transfer resumes at the partial file's length. When the declared size has arrived the file is
//! hashed, fsynced and renamed into place; a blob whose digest or size does not match is deleted
//! and refused. Only a committed manifest — verified, every blob present — makes an image, and
//! its layers are unpacked (each diff_id verified) before it is recorded: a refused blob is
//! never unpacked.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::config::{self, Parsed};
use super::error::ImageError;
use super::index::IndexRecord;
use super::{unpack, ImageRef, ImageStore};
use crate::proto::{BlobChunk, ImageCommit, ImageCommitted, WantedBlob};

/// The largest chunk accepted in one request, after decompression (the CLI sends 1 MiB).
pub use crate::proto::MAX_CHUNK_BYTES;

/// How long a chunk that arrived ahead of its turn waits for the chunks before it (the CLI keeps
/// several in flight and the daemon serves requests concurrently, so they may be handled out of
/// order). Past it the chunk is answered with the offset the host holds and the CLI resends.
const CHUNK_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl ImageStore {
    /// The blobs of `digests` not in the store, each with the bytes a partial file holds.
    pub fn wanted(&self, digests: &[String]) -> Result<Vec<WantedBlob>, ImageError> {
        let mut missing = Vec::new();
        for digest in digests {
            let path = self
                .blobs
                .path(digest)
                .ok_or_else(|| bad_digest("delivered image", digest))?;
            if path.is_file() {
                continue;
            }
            let offset = std::fs::metadata(path.with_extension("partial"))
                .map(|m| m.len())
                .unwrap_or(0);
            missing.push(WantedBlob {
                digest: digest.clone(),
                offset,
            });
        }
        Ok(missing)
    }

    /// Appends one chunk; returns the offset the next must start at and whether the blob is
    /// complete (verified and in place).
    ///
    /// The partial file only ever holds a prefix of the blob (what a resume trusts), so a chunk
    /// that arrives before the ones it follows waits its turn (bounded by [`CHUNK_TURN_WAIT`]; the
    /// CLI bounds how many are in flight) instead of leaving a hole.
    pub async fn receive_chunk(&self, chunk: &BlobChunk) -> Result<(u64, bool), ImageError> {
        let what = "delivered blob";
        let final_path = self
            .blobs
            .path(&chunk.digest)
            .ok_or_else(|| bad_digest(what, &chunk.digest))?;
        let data = decode_chunk(chunk)?;
        let partial = final_path.with_extension("partial");
        let deadline = tokio::time::Instant::now() + CHUNK_TURN_WAIT;
        let data = std::sync::Arc::new(data);
        loop {
            // Registered before the check, so a write between the check and the wait wakes us.
            let written = self.chunk_written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            {
                // One writer per digest: a registry pull or another delivery of the same blob waits.
                let _guard = self.in_flight(format!("blob {}", chunk.digest)).await;
                if final_path.is_file() {
                    return Ok((chunk.size, true));
                }
                let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
                let early = chunk.offset > have;
                if !early || tokio::time::Instant::now() >= deadline {
                    let result = self.write(chunk, &partial, &final_path, &data).await;
                    self.chunk_written.notify_waiters();
                    return result;
                }
            }
            // Ahead of its turn: wait for another chunk to be written, then look again.
            let _ = tokio::time::timeout_at(deadline, written).await;
        }
    }

    /// Writes one decoded chunk (in a blocking task) and counts its bytes when they were kept.
    async fn write(
        &self,
        chunk: &BlobChunk,
        partial: &std::path::Path,
        final_path: &std::path::Path,
        data: &std::sync::Arc<Vec<u8>>,
    ) -> Result<(u64, bool), ImageError> {
        let (partial, final_path, data) = (
            partial.to_path_buf(),
            final_path.to_path_buf(),
            data.clone(),
        );
        let (digest, size, offset) = (chunk.digest.clone(), chunk.size, chunk.offset);
        let received = data.len() as u64;
        let (next, complete) = tokio::task::spawn_blocking(move || {
            write_chunk(&partial, &final_path, &digest, size, offset, &data)
        })
        .await
        .map_err(|e| ImageError::Io {
            op: "receiving",
            path: self.blobs.dir().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })??;
        // A stale chunk (the host holds another prefix) was not written: it does not count.
        if complete || next == offset + received {
            {
                let mut map = self.received.lock().unwrap_or_else(|p| p.into_inner());
                *map.entry(chunk.digest.clone()).or_default() += received;
            }
            self.counters.bytes.fetch_add(received, Ordering::Relaxed);
        }
        Ok((next, complete))
    }

    /// Verifies and stores the manifest, checks its blobs are all here, unpacks the layers not
    /// yet unpacked and records the image under its reference and tags.
    pub async fn commit(&self, commit: &ImageCommit) -> Result<ImageCommitted, ImageError> {
        let image_ref = ImageRef::parse(&commit.reference)?;
        let canonical = image_ref.canonical();
        let _shared = self.gc_lock.read().await;
        let body = base64::engine::general_purpose::STANDARD
            .decode(&commit.manifest_b64)
            .map_err(|e| ImageError::BadImage {
                image: canonical.clone(),
                reason: format!("its manifest is not base64: {e}"),
            })?;
        let bad = |reason: String| ImageError::BadImage {
            image: canonical.clone(),
            reason,
        };
        // Checked before it is stored: a manifest naming blobs we lack is refused as a whole.
        let manifest = match config::parse_manifest(&body).map_err(bad)? {
            Parsed::Manifest(m) => m,
            Parsed::Index(_) => {
                return Err(bad(
                    "a delivered image must be one platform's manifest, not a list".into(),
                ))
            }
        };
        let actual = super::blobs::sha256_digest(&body);
        if actual != commit.digest {
            return Err(ImageError::DigestMismatch {
                image: canonical,
                what: "manifest",
                expected: commit.digest.clone(),
                actual,
            });
        }
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !self.blobs.contains(&desc.digest) {
                return Err(bad(format!(
                    "blob {} was not delivered before the manifest; deliver it and commit again",
                    desc.digest
                )));
            }
        }
        let config_file = self.read_config(&canonical, &manifest.config.digest)?;
        if config_file.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "its manifest lists {} layers but its config {} diff_ids",
                manifest.layers.len(),
                config_file.rootfs.diff_ids.len()
            )));
        }
        let dirs = self.layer_dirs(&canonical, &config_file)?;
        let mut unpacked = 0;
        for ((desc, diff_id), dir) in manifest
            .layers
            .iter()
            .zip(&config_file.rootfs.diff_ids)
            .zip(&dirs)
        {
            if dir.is_dir() {
                continue;
            }
            let _guard = self.in_flight(format!("layer {diff_id}")).await;
            if dir.is_dir() {
                continue;
            }
            let compression = unpack::compression_for(&desc.media_type).map_err(|hint| {
                ImageError::UnsupportedMediaType {
                    image: canonical.clone(),
                    digest: desc.digest.clone(),
                    media_type: desc.media_type.clone(),
                    hint,
                }
            })?;
            self.unpack(&canonical, desc, compression, diff_id, dir)
                .await?;
            unpacked += 1;
        }
        // The manifest last: once it is in the store the image is whole.
        self.blobs
            .put_verified(&canonical, "manifest", &commit.digest, &body)?;
        let mut names = vec![canonical.clone()];
        for tag in &commit.tags {
            names.push(ImageRef::parse(tag)?.canonical());
        }
        {
            let mut index = self.index.lock().await;
            let record = IndexRecord {
                manifest: commit.digest.clone(),
                list: None,
            };
            let mut changed = false;
            for name in names {
                if index.images.get(&name) != Some(&record) {
                    index.images.insert(name, record.clone());
                    changed = true;
                }
            }
            if changed {
                index.save(&self.index_path)?;
            }
            for name in index.images.iter().filter(|(_, r)| **r == record) {
                self.touch(name.0);
            }
        }
        let bytes_received = {
            let mut map = self.received.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .filter_map(|d| map.remove(&d.digest))
                .sum()
        };
        Ok(ImageCommitted {
            reference: commit.reference.clone(),
            layers_unpacked: unpacked,
            bytes_received,
        })
    }
}

/// The blob bytes a chunk carries: base64 decoded, then decompressed when the CLI compressed
/// them, never more than [`MAX_CHUNK_BYTES`] (a small gzip stream cannot make us hold more).
fn decode_chunk(chunk: &BlobChunk) -> Result<Vec<u8>, ImageError> {
    let bad = |reason: String| ImageError::BadImage {
        image: "delivered blob".into(),
        reason,
    };
    let wire = base64::engine::general_purpose::STANDARD
        .decode(&chunk.data_b64)
        .map_err(|e| bad(format!("chunk of {} is not base64: {e}", chunk.digest)))?;
    let data = match chunk.encoding.as_deref() {
        None => wire,
        Some("gzip") => {
            let mut out = Vec::with_capacity(wire.len().saturating_mul(2).min(MAX_CHUNK_BYTES));
            flate2::read::GzDecoder::new(&wire[..])
                .take(MAX_CHUNK_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    bad(format!(
                        "a gzip chunk of {} does not decompress: {e}",
                        chunk.digest
                    ))
                })?;
            out
        }
        Some(other) => {
            return Err(bad(format!(
                "a chunk of {} has the unknown encoding `{other}` (this agent knows gzip); \
                 upgrade the agent",
                chunk.digest
            )))
        }
    };
    if data.len() > MAX_CHUNK_BYTES {
        return Err(bad(format!(
            "a chunk of {} bytes or more is larger than {MAX_CHUNK_BYTES}",
            data.len()
        )));
    }
    Ok(data)
}

fn bad_digest(image: &str, digest: &str) -> ImageError {
    ImageError::BadImage {
        image: image.to_string(),
        reason: format!("`{digest}` is not a sha256 digest; only sha256 is supported"),
    }
}

/// Appends `data` at `offset` to the partial file; at `size` bytes verifies and publishes it.
fn write_chunk(
    partial: &std::path::Path,
    final_path: &std::path::Path,
    digest: &str,
    size: u64,
    offset: u64,
    data: &[u8],
) -> Result<(u64, bool), ImageError> {
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if offset != have && offset != 0 {
        // The sender's idea of the offset is stale (a chunk lost with the connection): tell it
        // where we are, it resumes from there.
        return Ok((have, false));
    }
    let end = offset + data.len() as u64;
    if end > size {
        let _ = std::fs::remove_file(partial);
        return Err(ImageError::SizeMismatch {
            image: "delivered blob".into(),
            digest: digest.to_string(),
            expected: size,
            actual: end,
            more: " or more",
        });
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(offset == 0)
        .open(partial)
        .map_err(ImageError::io("creating", partial))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset))
        .and_then(|_| file.write_all(data))
        .map_err(ImageError::io("writing", partial))?;
    if end < size {
        return Ok((end, false));
    }
    file.sync_all()
        .map_err(ImageError::io("syncing", partial))?;
    drop(file);
    // Hash what is on disk, not what we were sent: that is what will be unpacked.
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(partial).map_err(ImageError::io("reading", partial))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(ImageError::io("reading", partial))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest || len != size {
        let _ = std::fs::remove_file(partial);
        return Err(ImageError::BadImage {
            image: format!("delivered blob {digest}"),
            reason: format!(
                "it failed verification: {len} bytes with digest {actual}, expected {size} bytes \
                 with digest {digest}; it was deleted and nothing was unpacked"
            ),
        });
    }
    std::fs::rename(partial, final_path).map_err(ImageError::io("renaming", partial))?;
    if let Some(dir) = final_path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok((size, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::BlobChunk;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    /// A one-layer image (uncompressed tar with one file): (manifest, config, layer).
    fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        let body = b"hello from a delivered layer\n";
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello.txt", &body[..])
            .expect("tar");
        let layer = builder.into_inner().expect("tar");
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}
        }))
        .expect("json");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest(&layer), "size": layer.len()}]
        }))
        .expect("json");
        (manifest, config, layer)
    }

    async fn send(store: &ImageStore, blob: &[u8], chunk: usize) -> Result<(), ImageError> {
        let mut offset = 0usize;
        while offset < blob.len() {
            let end = (offset + chunk).min(blob.len());
            let (next, _) = store
                .receive_chunk(&BlobChunk {
                    digest: digest(blob),
                    size: blob.len() as u64,
                    offset: offset as u64,
                    data_b64: b64(&blob[offset..end]),
                    encoding: None,
                })
                .await?;
            offset = next as usize;
        }
        Ok(())
    }

    #[tokio::test]
    async fn delivered_image_is_unpacked_and_found_by_digest_without_a_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let (manifest, config, layer) = image();
        let all = vec![digest(&config), digest(&layer)];
        assert_eq!(store.wanted(&all).expect("wanted").len(), 2);
        send(&store, &config, 7).await.expect("config");
        // The layer in two goes: a cut transfer resumes at the partial file's length.
        let half = layer.len() / 2;
        store
            .receive_chunk(&BlobChunk {
                digest: digest(&layer),
                size: layer.len() as u64,
                offset: 0,
                data_b64: b64(&layer[..half]),
                encoding: None,
            })
            .await
            .expect("first half");
        let wanted = store.wanted(&all).expect("wanted");
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].offset, half as u64);
        let (next, complete) = store
            .receive_chunk(&BlobChunk {
                digest: digest(&layer),
                size: layer.len() as u64,
                offset: half as u64,
                data_b64: b64(&layer[half..]),
                encoding: None,
            })
            .await
            .expect("second half");
        assert_eq!((next, complete), (layer.len() as u64, true));
        assert!(store.wanted(&all).expect("wanted").is_empty());

        let reference = format!("localhost/app-web@{}", digest(&manifest));
        let committed = store
            .commit(&ImageCommit {
                reference: reference.clone(),
                digest: digest(&manifest),
                manifest_b64: b64(&manifest),
                tags: vec!["example.org/app:1".into()],
            })
            .await
            .expect("commit");
        assert_eq!(committed.layers_unpacked, 1);
        assert_eq!(
            committed.bytes_received,
            (config.len() + layer.len()) as u64
        );
        // A pull by digest finds it: no registry is asked (there is none at localhost).
        let image = store.pull(&reference, None, &[]).await.expect("present");
        assert_eq!(
            std::fs::read(image.layer_dirs[0].join("hello.txt")).expect("file"),
            b"hello from a delivered layer\n"
        );
        assert!(store.get("example.org/app:1").await.expect("get").is_some());
    }

    #[tokio::test]
    async fn corrupted_blob_is_refused_and_never_unpacked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let (manifest, config, layer) = image();
        send(&store, &config, 1 << 20).await.expect("config");
        let mut corrupt = layer.clone();
        let last = corrupt.len() - 600;
        corrupt[last] ^= 0xff;
        let err = store
            .receive_chunk(&BlobChunk {
                digest: digest(&layer),
                size: layer.len() as u64,
                offset: 0,
                data_b64: b64(&corrupt),
                encoding: None,
            })
            .await
            .expect_err("a corrupted blob is refused");
        assert!(err.to_string().contains("failed verification"), "{err}");
        let path = store.blob_path(&digest(&layer)).expect("path");
        assert!(!path.exists() && !path.with_extension("partial").exists());
        let err = store
            .commit(&ImageCommit {
                reference: format!("localhost/app-web@{}", digest(&manifest)),
                digest: digest(&manifest),
                manifest_b64: b64(&manifest),
                tags: vec![],
            })
            .await
            .expect_err("the manifest of an incomplete image is refused");
        assert!(err.to_string().contains("was not delivered"), "{err}");
        let layers: Vec<_> = std::fs::read_dir(dir.path().join("layers"))
            .expect("layers")
            .collect();
        assert!(layers.is_empty(), "nothing was unpacked: {layers:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_handled_out_of_order_wait_their_turn_and_the_blob_completes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(ImageStore::open(dir.path()).expect("open"));
        let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunk = 10_000;
        // Last chunk first, as a daemon serving a pipelined window concurrently may.
        let mut tasks = Vec::new();
        for start in (0..blob.len()).step_by(chunk).rev() {
            let store = store.clone();
            let c = BlobChunk {
                digest: digest(&blob),
                size: blob.len() as u64,
                offset: start as u64,
                data_b64: b64(&blob[start..(start + chunk).min(blob.len())]),
                encoding: None,
            };
            tasks.push(tokio::spawn(async move { store.receive_chunk(&c).await }));
            tokio::task::yield_now().await;
        }
        let mut completes = 0;
        for t in tasks {
            let (next, complete) = t.await.expect("task").expect("chunk");
            assert!(complete || next % chunk as u64 == 0, "{next}");
            completes += usize::from(complete);
        }
        assert_eq!(completes, 1, "the last chunk written completes the blob");
        let path = store.blob_path(&digest(&blob)).expect("path");
        assert_eq!(std::fs::read(path).expect("blob"), blob);
        assert_eq!(
            store.received.lock().expect("map")[&digest(&blob)],
            blob.len() as u64,
            "every byte counted once"
        );
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).expect("gzip");
        enc.finish().expect("gzip")
    }

    #[tokio::test]
    async fn a_gzip_chunk_is_stored_decompressed_and_verified_against_the_uncompressed_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let (_, _, layer) = image();
        let half = layer.len() / 2;
        for (start, end) in [(0, half), (half, layer.len())] {
            store
                .receive_chunk(&BlobChunk {
                    digest: digest(&layer),
                    size: layer.len() as u64,
                    offset: start as u64,
                    data_b64: b64(&gzip(&layer[start..end])),
                    encoding: Some("gzip".into()),
                })
                .await
                .expect("gzip chunk");
        }
        let path = store.blob_path(&digest(&layer)).expect("path");
        assert_eq!(std::fs::read(path).expect("blob"), layer);

        // A small gzip stream that would expand past the chunk limit is refused, not buffered.
        let bomb = gzip(&vec![0u8; MAX_CHUNK_BYTES + 1]);
        let err = store
            .receive_chunk(&BlobChunk {
                digest: digest(b"x"),
                size: (MAX_CHUNK_BYTES + 1) as u64,
                offset: 0,
                data_b64: b64(&bomb),
                encoding: Some("gzip".into()),
            })
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("larger than"), "{err}");
        let err = store
            .receive_chunk(&BlobChunk {
                digest: digest(b"x"),
                size: 1,
                offset: 0,
                data_b64: b64(b"x"),
                encoding: Some("zstd".into()),
            })
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("unknown encoding `zstd`"), "{err}");
    }
}
