//! Content-addressed blobs under `blobs/sha256/<hex>`: streamed from the registry to disk,
//! hashed while they stream, verified by digest and size, then renamed into place.
//!
//! A blob file exists only once verified, so its presence means "have it": it is never fetched
//! again. A download in progress is `<hex>.partial`; after a crash the next pull resumes it with an
//! HTTP range request (hashing the bytes already on disk first). If the registry ignores the range
//! it restarts from zero; if the resumed blob fails verification, the partial file is deleted and
//! the download is retried once from zero, so a torn or stale partial can never enter the store.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::config::Descriptor;
use super::error::{ImageError, Result};
use super::reference::is_sha256_hex;

/// Counters of what pulls fetched from registries (blobs only; manifests separately).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub blobs: AtomicU64,
    pub bytes: AtomicU64,
    pub manifests: AtomicU64,
    /// Unpacks started: makes temporary directory names unique.
    pub unpacks: AtomicU64,
}

pub(crate) struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub fn new(dir: PathBuf) -> BlobStore {
        BlobStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `blobs/sha256/<hex>` for a `sha256:<hex>` digest; anything else is refused, so a digest
    /// from the network can never name a path outside the store.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        is_sha256_hex(hex).then(|| self.dir.join(hex))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_some_and(|p| p.is_file())
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest).ok_or_else(|| ImageError::Io {
            op: "reading blob",
            path: self.dir.join(digest),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a sha256 digest"),
        })?;
        std::fs::read(&path).map_err(ImageError::io("reading", path))
    }

    /// Stores bytes already in memory (manifests) after checking their digest.
    pub fn put_verified(
        &self,
        image: &str,
        what: &'static str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<()> {
        let path = self
            .path(digest)
            .ok_or_else(|| unsupported_digest(image, digest))?;
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                image: image.to_string(),
                what,
                expected: digest.to_string(),
                actual,
            });
        }
        if path.is_file() {
            return Ok(());
        }
        super::index::write_atomic(&path, bytes)
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn unsupported_digest(image: &str, digest: &str) -> ImageError {
    ImageError::BadImage {
        image: image.to_string(),
        reason: format!("digest `{digest}` is not a sha256 digest; only sha256 is supported"),
    }
}

/// What one download needs to know.
pub(crate) struct Fetch<'a> {
    pub client: &'a Client,
    pub reference: &'a Reference,
    pub image: &'a str,
    pub registry_error: &'a (dyn Fn(OciDistributionError) -> ImageError + Sync),
    pub counters: &'a Counters,
}

/// Makes sure the blob is in the store: returns at once when present, otherwise streams it to a
/// `.partial` file (resuming one left by a crash), verifies it and renames it into place.
pub(crate) async fn ensure_blob(
    store: &BlobStore,
    fetch: &Fetch<'_>,
    desc: &Descriptor,
) -> Result<()> {
    let final_path = store
        .path(&desc.digest)
        .ok_or_else(|| unsupported_digest(fetch.image, &desc.digest))?;
    if final_path.is_file() {
        return Ok(());
    }
    let size = u64::try_from(desc.size).map_err(|_| ImageError::BadImage {
        image: fetch.image.to_string(),
        reason: format!("blob {} has a negative size in the manifest", desc.digest),
    })?;
    let partial = final_path.with_extension("partial");
    match download(fetch, desc, size, &partial, true).await {
        Err(Attempt::Resumed(_)) => match download(fetch, desc, size, &partial, false).await {
            Ok(()) => {}
            Err(Attempt::Resumed(e) | Attempt::Failed(e)) => return Err(e),
        },
        Err(Attempt::Failed(e)) => return Err(e),
        Ok(()) => {}
    }
    std::fs::rename(&partial, &final_path).map_err(ImageError::io("renaming", &partial))?;
    if let Ok(dir) = std::fs::File::open(store.dir()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

enum Attempt {
    /// Verification failed after resuming a partial file: worth one retry from zero.
    Resumed(ImageError),
    Failed(ImageError),
}

async fn download(
    fetch: &Fetch<'_>,
    desc: &Descriptor,
    size: u64,
    partial: &Path,
    may_resume: bool,
) -> Result<(), Attempt> {
    let fail = Attempt::Failed;
    let existing = match tokio::fs::metadata(partial).await {
        Ok(m) if may_resume && m.len() > 0 && m.len() < size => m.len(),
        _ => 0,
    };
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .await
        .map_err(|e| fail(ImageError::io("creating", partial)(e)))?;
    let mut out = HashingWriter {
        inner: tokio::io::BufWriter::with_capacity(256 << 10, file),
        hasher: Sha256::new(),
        written: 0,
        limit: size,
        fetched: &fetch.counters.bytes,
    };
    let layer = desc.to_oci();
    let mut resumed = false;
    if existing > 0 {
        // Hash what is already on disk, then ask only for the rest.
        out.hash_existing(partial, existing)
            .await
            .map_err(|e| fail(ImageError::io("reading", partial)(e)))?;
        let response = fetch
            .client
            .pull_blob_stream_partial(fetch.reference, &layer, existing, None)
            .await
            .map_err(|e| fail((fetch.registry_error)(e)))?;
        let stream = match response {
            BlobResponse::Partial(s) => {
                resumed = true;
                s
            }
            BlobResponse::Full(s) => {
                // The registry ignored the range: start over.
                out.restart(partial)
                    .await
                    .map_err(|e| fail(ImageError::io("truncating", partial)(e)))?;
                s
            }
        };
        let mut stream = stream.stream;
        while let Some(chunk) = stream.next().await {
            let written = match chunk {
                Ok(bytes) => out.write_all(&bytes).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                return Err(fail(out.failure(fetch, desc, partial, e).await));
            }
        }
    } else {
        out.restart(partial)
            .await
            .map_err(|e| fail(ImageError::io("truncating", partial)(e)))?;
        if let Err(e) = fetch
            .client
            .pull_blob(fetch.reference, &layer, &mut out)
            .await
        {
            // oci-client verifies the digest too; report our own verdict when we have one.
            let io = std::io::Error::other(e.to_string());
            return Err(match out.verdict(fetch, desc, partial).await {
                Some(err) => fail(err),
                None if out.written > out.limit => {
                    fail(out.failure(fetch, desc, partial, io).await)
                }
                None if matches!(e, OciDistributionError::DigestError(_)) => {
                    // The registry's own digest header disagreed before the size was reached.
                    let _ = tokio::fs::remove_file(partial).await;
                    fail(ImageError::SizeMismatch {
                        image: fetch.image.to_string(),
                        digest: desc.digest.clone(),
                        expected: size,
                        actual: out.written,
                        more: "",
                    })
                }
                None => fail((fetch.registry_error)(e)),
            });
        }
    }
    out.inner
        .flush()
        .await
        .map_err(|e| fail(ImageError::io("writing", partial)(e)))?;
    out.inner
        .get_ref()
        .sync_all()
        .await
        .map_err(|e| fail(ImageError::io("syncing", partial)(e)))?;
    if let Some(err) = out.verdict(fetch, desc, partial).await {
        return Err(if resumed {
            Attempt::Resumed(err)
        } else {
            fail(err)
        });
    }
    if out.written != size {
        // Stream ended early: keep the partial file for the next attempt to resume.
        return Err(fail(ImageError::BadImage {
            image: fetch.image.to_string(),
            reason: format!(
                "the registry closed the download of blob {} after {} of {size} bytes; pull again to resume",
                desc.digest, out.written
            ),
        }));
    }
    fetch.counters.blobs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A file writer that hashes and counts what passes through and refuses to grow past the size
/// the manifest promised (a registry cannot fill the disk).
struct HashingWriter<'a> {
    inner: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Sha256,
    written: u64,
    limit: u64,
    fetched: &'a AtomicU64,
}

impl HashingWriter<'_> {
    async fn hash_existing(&mut self, path: &Path, len: u64) -> std::io::Result<()> {
        let mut f = tokio::fs::File::open(path).await?.take(len);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
        }
        if self.written != len {
            return Err(std::io::Error::other("partial file shrank while reading"));
        }
        Ok(())
    }

    async fn restart(&mut self, path: &Path) -> std::io::Result<()> {
        self.inner.flush().await?;
        self.inner.get_ref().set_len(0).await?;
        let _ = path;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// The verification error, if the whole blob arrived and does not match its descriptor.
    async fn verdict(
        &mut self,
        fetch: &Fetch<'_>,
        desc: &Descriptor,
        partial: &Path,
    ) -> Option<ImageError> {
        if self.written > self.limit {
            return Some(
                self.failure(fetch, desc, partial, std::io::Error::other("too big"))
                    .await,
            );
        }
        if self.written != self.limit {
            return None;
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual == desc.digest {
            return None;
        }
        let _ = tokio::fs::remove_file(partial).await;
        Some(ImageError::DigestMismatch {
            image: fetch.image.to_string(),
            what: "blob",
            expected: desc.digest.clone(),
            actual,
        })
    }

    /// An error while writing: an oversized blob is deleted, anything else kept for resuming.
    async fn failure(
        &mut self,
        fetch: &Fetch<'_>,
        desc: &Descriptor,
        partial: &Path,
        e: std::io::Error,
    ) -> ImageError {
        if self.written > self.limit {
            let _ = tokio::fs::remove_file(partial).await;
            return ImageError::SizeMismatch {
                image: fetch.image.to_string(),
                digest: desc.digest.clone(),
                expected: self.limit,
                actual: self.written,
                more: " or more",
            };
        }
        let _ = self.inner.flush().await;
        ImageError::Io {
            op: "downloading into",
            path: partial.to_path_buf(),
            source: e,
        }
    }
}

impl AsyncWrite for HashingWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written + buf.len() as u64 > this.limit {
            this.written += buf.len() as u64;
            return Poll::Ready(Err(std::io::Error::other(
                "blob is larger than its descriptor says",
            )));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                this.fetched.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
