//! The image store: OCI pulls streamed to disk, blobs verified by digest, layers shared.
//!
//! Layout under the store's root (`/var/lib/compose-fleet/images` on a host):
//! ```text
//! blobs/sha256/<hex>           manifests, configs, layer tarballs; present ⇒ verified
//! blobs/sha256/<hex>.partial   a download in progress (resumed after a crash)
//! layers/<diff_id hex>/        one unpacked layer: an overlayfs lower dir, shared by images
//! layers/.tmp-*                an unpack in progress (removed on open)
//! images/index.json            reference → manifest digest: what is present after a restart
//! ```
//! A pull resolves the reference (a manifest list to this host's platform), fetches the manifest
//! and config, then downloads and unpacks up to [`LAYER_CONCURRENCY`] layers at a time. Blobs and
//! layers are content-addressed: an image sharing a layer with one already present downloads
//! nothing for it. Every write is atomic (temp + rename), so a crash never leaves a half blob or
//! half layer under its final name. [`ImageStore::gc`] removes images no pod needs, then the blobs
//! and layers no remaining image uses.
//!
//! Registry credentials are used for the request only: never logged, never written.

mod blobs;
mod config;
mod error;
mod index;
mod receive;
mod reference;
mod unpack;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::Client;

use crate::proto::RegistryAuth;
use blobs::{BlobStore, Counters, Fetch};
use config::{ConfigFile, Descriptor, Manifest, Parsed};
use index::{Index, IndexRecord};

pub use config::{ImageConfig, ImageHealthcheck};
pub use error::ImageError;
pub use receive::MAX_CHUNK_BYTES;
pub use reference::{ImageRef, Platform};

/// Where the agent keeps images on a host.
pub const DEFAULT_ROOT: &str = "/var/lib/compose-fleet/images";

/// How many layers of one pull download and unpack at once.
pub const LAYER_CONCURRENCY: usize = 4;

/// A pulled image, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The canonical reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The platform-specific image manifest (`sha256:…`), also for references to a manifest list.
    pub manifest_digest: String,
    /// The image config's digest: what Docker calls the image ID.
    pub config_digest: String,
    pub config: ImageConfig,
    /// The unpacked layers, lowest first (overlayfs wants them reversed in `lowerdir=`).
    pub layer_dirs: Vec<PathBuf>,
}

impl Image {
    /// What the runtime needs to create a container from this image (`runtime::ImageConfig`:
    /// entrypoint, cmd, env, user, working dir and the layer dirs, bottom first).
    pub fn runtime_config(&self) -> crate::runtime::ImageConfig {
        crate::runtime::ImageConfig {
            entrypoint: self.config.entrypoint.clone(),
            cmd: self.config.cmd.clone(),
            env: self.config.env.clone(),
            user: self.config.user.clone(),
            working_dir: self.config.working_dir.clone(),
            layers: self.layer_dirs.clone(),
        }
    }
}

/// What pulls fetched from registries since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullStats {
    /// Blobs (configs and layers) downloaded and verified.
    pub blobs_fetched: u64,
    /// Blob bytes received (resumed downloads count only the bytes fetched this time).
    pub bytes_fetched: u64,
    /// Manifests and manifest lists fetched.
    pub manifests_fetched: u64,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Canonical references dropped from the index.
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
}

/// The image store. Cheap to share behind an `Arc`; pulls may run concurrently.
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
    layers: PathBuf,
    index_path: PathBuf,
    index: tokio::sync::Mutex<Index>,
    /// Pulls hold it shared, `gc` exclusively: gc never deletes what a pull is writing.
    gc_lock: tokio::sync::RwLock<()>,
    /// One download per digest at a time, so concurrent pulls never share a `.partial` file.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    privileged: bool,
    /// Bytes received per blob by delivery (`receive`) since the blob's image was last committed.
    received: Mutex<HashMap<String, u64>>,
    /// Woken after each delivered chunk is written: chunks that arrived ahead of their turn wait
    /// on it (see `receive::receive_chunk`).
    chunk_written: tokio::sync::Notify,
    /// When each image (canonical reference) was last pulled, delivered or found: what
    /// [`ImageStore::collect`] keeps within its grace period.
    used: Mutex<HashMap<String, std::time::Instant>>,
}

/// What [`ImageStore::collect`] must keep.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    /// Image references (as pods name them) still wanted: by the kept release records of every
    /// project, and by the pods on the host.
    pub images: Vec<ImageRef>,
    /// Unpacked layers (their `diff_id` hex) that containers on the host run from.
    pub layers: BTreeSet<String>,
    /// Images used, and blobs and layers written, more recently than this are kept whatever
    /// `images` says: a pull or a delivery in progress, an image delivered for a release not yet
    /// recorded.
    pub grace: std::time::Duration,
}

impl ImageStore {
    /// Opens (creating) the store at `root`; removes unfinished unpacks left by a crash. Partial
    /// blob downloads are kept and resumed by the next pull that needs them.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        let blob_dir = root.join("blobs").join("sha256");
        let layers = root.join("layers");
        let images = root.join("images");
        for dir in [&blob_dir, &layers, &images] {
            std::fs::create_dir_all(dir).map_err(ImageError::io("creating", dir))?;
        }
        for entry in std::fs::read_dir(&layers)
            .map_err(ImageError::io("reading", &layers))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let index_path = images.join("index.json");
        let index = Index::load(&index_path)?;
        Ok(ImageStore {
            root,
            blobs: BlobStore::new(blob_dir),
            layers,
            index_path,
            index: tokio::sync::Mutex::new(index),
            gc_lock: tokio::sync::RwLock::new(()),
            in_flight: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            privileged: nix::unistd::geteuid().is_root(),
            received: Mutex::new(HashMap::new()),
            chunk_written: tokio::sync::Notify::new(),
            used: Mutex::new(HashMap::new()),
        })
    }

    /// Notes that `canonical` was just pulled, delivered or found (see [`Keep::grace`]).
    fn touch(&self, canonical: &str) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.insert(canonical.to_string(), std::time::Instant::now());
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> PullStats {
        PullStats {
            blobs_fetched: self.counters.blobs.load(Ordering::Relaxed),
            bytes_fetched: self.counters.bytes.load(Ordering::Relaxed),
            manifests_fetched: self.counters.manifests.load(Ordering::Relaxed),
        }
    }

    /// The blob file of a digest (present or not): for tests and diagnostics.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        self.blobs.path(digest)
    }

    /// Canonical references present, with their manifest digests.
    pub async fn list(&self) -> Vec<(String, String)> {
        let index = self.index.lock().await;
        index
            .images
            .iter()
            .map(|(r, rec)| (r.clone(), rec.manifest.clone()))
            .collect()
    }

    /// The image if it is fully present (manifest, config and every layer), without any network.
    /// The daemon calls this for `pull_policy: missing` and after a restart.
    pub async fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let image_ref = ImageRef::parse(reference)?;
        let record = {
            let index = self.index.lock().await;
            index.images.get(&image_ref.canonical()).cloned()
        };
        let record = match (record, image_ref.digest()) {
            (Some(r), _) => r,
            // A reference by digest is present when any entry resolved to that digest.
            (None, Some(d)) => match self.find_by_digest(d).await {
                Some(r) => r,
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        let image = self.load_image(&image_ref.canonical(), &record.manifest)?;
        if image.is_some() {
            self.touch(&image_ref.canonical());
        }
        Ok(image)
    }

    async fn find_by_digest(&self, digest: &str) -> Option<IndexRecord> {
        let index = self.index.lock().await;
        index
            .images
            .values()
            .find(|r| r.manifest == digest || r.list.as_deref() == Some(digest))
            .cloned()
    }

    fn load_image(
        &self,
        canonical: &str,
        manifest_digest: &str,
    ) -> Result<Option<Image>, ImageError> {
        if !self.blobs.contains(manifest_digest) {
            return Ok(None);
        }
        let body = self.blobs.read(manifest_digest)?;
        let Ok(Parsed::Manifest(manifest)) = config::parse_manifest(&body) else {
            return Ok(None);
        };
        if !self.blobs.contains(&manifest.config.digest) {
            return Ok(None);
        }
        let config_file = self.read_config(canonical, &manifest.config.digest)?;
        let layer_dirs = self.layer_dirs(canonical, &config_file)?;
        if !layer_dirs.iter().all(|d| d.is_dir()) {
            return Ok(None);
        }
        Ok(Some(Image {
            reference: canonical.to_string(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: manifest.config.digest.clone(),
            config: config_file.image_config(),
            layer_dirs,
        }))
    }

    fn read_config(&self, image: &str, digest: &str) -> Result<ConfigFile, ImageError> {
        let bytes = self.blobs.read(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::BadImage {
            image: image.to_string(),
            reason: format!("its config {digest} is not a valid image config: {e}"),
        })
    }

    fn layer_dirs(&self, image: &str, config: &ConfigFile) -> Result<Vec<PathBuf>, ImageError> {
        config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                self.layer_dir(d).ok_or_else(|| ImageError::BadImage {
                    image: image.to_string(),
                    reason: format!("layer diff_id `{d}` in its config is not a sha256 digest"),
                })
            })
            .collect()
    }

    fn layer_dir(&self, diff_id: &str) -> Option<PathBuf> {
        let hex = diff_id.strip_prefix("sha256:")?;
        reference::is_sha256_hex(hex).then(|| self.layers.join(hex))
    }

    /// Pulls an image: resolves `reference`, fetches what is missing, verifies everything by
    /// digest, unpacks new layers and records the image in the index.
    ///
    /// `auth` is the credential for the reference's registry (see [`ImageRef::registry`]);
    /// `insecure` lists registries (`host[:port]`) reached over plain http — any other is https.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        insecure: &[String],
    ) -> Result<Image, ImageError> {
        let image_ref = ImageRef::parse(reference)?;
        let canonical = image_ref.canonical();
        let _shared = self.gc_lock.read().await;
        // A digest names immutable content: when it is all here, there is nothing to ask for.
        if image_ref.digest().is_some() {
            if let Some(image) = self.get(reference).await? {
                return Ok(image);
            }
        }

        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
            platform_resolver: None,
            max_concurrent_download: LAYER_CONCURRENCY,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        });
        let oci_auth = match auth {
            Some(a) => OciAuth::Basic(a.username.clone(), a.password.clone()),
            None => OciAuth::Anonymous,
        };
        let registry = image_ref.registry().to_string();
        let is_insecure = insecure.iter().any(|r| r == &registry);
        let registry_error = |source: OciDistributionError| {
            registry_error(&canonical, &registry, is_insecure, auth.is_some(), source)
        };

        // 1. The manifest, or the manifest list and then this platform's manifest.
        let (body, digest) = client
            .pull_manifest_raw(image_ref.oci(), &oci_auth, config::ACCEPTED_MANIFESTS)
            .await
            .map_err(&registry_error)?;
        self.counters.manifests.fetch_add(1, Ordering::Relaxed);
        self.blobs
            .put_verified(&canonical, "manifest", &digest, &body)?;
        let bad = |reason: String| ImageError::BadImage {
            image: canonical.clone(),
            reason,
        };
        let (manifest, manifest_digest, list) = match config::parse_manifest(&body).map_err(bad)? {
            Parsed::Manifest(m) => (m, digest, None),
            Parsed::Index(entries) => {
                let chosen = choose_platform(&canonical, &entries)?;
                let child = image_ref.with_digest(&chosen);
                let (body, child_digest) = client
                    .pull_manifest_raw(&child, &oci_auth, config::ACCEPTED_MANIFESTS)
                    .await
                    .map_err(&registry_error)?;
                self.counters.manifests.fetch_add(1, Ordering::Relaxed);
                if child_digest != chosen {
                    return Err(ImageError::DigestMismatch {
                        image: canonical.clone(),
                        what: "manifest",
                        expected: chosen,
                        actual: child_digest,
                    });
                }
                self.blobs
                    .put_verified(&canonical, "manifest", &chosen, &body)?;
                match config::parse_manifest(&body).map_err(bad)? {
                    Parsed::Manifest(m) => (m, chosen, Some(digest)),
                    Parsed::Index(_) => {
                        return Err(bad(format!(
                            "manifest list entry {chosen} is itself a list"
                        )))
                    }
                }
            }
        };

        // 2. The config: it names the uncompressed digest (diff_id) of every layer.
        let fetch = Fetch {
            client: &client,
            reference: image_ref.oci(),
            image: &canonical,
            registry_error: &registry_error,
            counters: &self.counters,
        };
        self.ensure_blob(&fetch, &manifest.config).await?;
        let config_file = self.read_config(&canonical, &manifest.config.digest)?;
        if config_file.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadImage {
                image: canonical.clone(),
                reason: format!(
                    "its manifest lists {} layers but its config {} diff_ids",
                    manifest.layers.len(),
                    config_file.rootfs.diff_ids.len()
                ),
            });
        }
        let layer_dirs = self.layer_dirs(&canonical, &config_file)?;

        // 3. Layers, a few at a time: download (unless unpacked already), verify, unpack.
        self.fetch_layers(&fetch, &manifest, &config_file, &layer_dirs)
            .await?;

        // 4. Record it: after a restart the daemon finds it with `get`.
        {
            let mut index = self.index.lock().await;
            let record = IndexRecord {
                manifest: manifest_digest.clone(),
                list,
            };
            if index.images.get(&canonical) != Some(&record) {
                index.images.insert(canonical.clone(), record);
                index.save(&self.index_path)?;
            }
        }
        self.touch(&canonical);
        Ok(Image {
            reference: canonical,
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            config: config_file.image_config(),
            layer_dirs,
        })
    }

    async fn fetch_layers(
        &self,
        fetch: &Fetch<'_>,
        manifest: &Manifest,
        config: &ConfigFile,
        dirs: &[PathBuf],
    ) -> Result<(), ImageError> {
        let jobs = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(dirs);
        stream::iter(jobs.map(Ok))
            .try_for_each_concurrent(LAYER_CONCURRENCY, |((desc, diff_id), dir)| async move {
                if dir.is_dir() {
                    return Ok(());
                }
                // One unpack per layer at a time; whoever waited finds it done.
                let _guard = self.in_flight(format!("layer {diff_id}")).await;
                if dir.is_dir() {
                    return Ok(());
                }
                let compression = unpack::compression_for(&desc.media_type).map_err(|hint| {
                    ImageError::UnsupportedMediaType {
                        image: fetch.image.to_string(),
                        digest: desc.digest.clone(),
                        media_type: desc.media_type.clone(),
                        hint,
                    }
                })?;
                self.ensure_blob(fetch, desc).await?;
                self.unpack(fetch.image, desc, compression, diff_id, dir)
                    .await
            })
            .await
    }

    async fn ensure_blob(&self, fetch: &Fetch<'_>, desc: &Descriptor) -> Result<(), ImageError> {
        let _guard = self.in_flight(format!("blob {}", desc.digest)).await;
        blobs::ensure_blob(&self.blobs, fetch, desc).await
    }

    /// Waits until no other task works on `key`, then holds it until the guard drops.
    async fn in_flight(&self, key: String) -> InFlight<'_> {
        let lock = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        InFlight {
            map: &self.in_flight,
            key,
            guard: Some(lock.lock_owned().await),
        }
    }

    async fn unpack(
        &self,
        image: &str,
        desc: &Descriptor,
        compression: unpack::Compression,
        diff_id: &str,
        dir: &Path,
    ) -> Result<(), ImageError> {
        let blob = self.blobs.path(&desc.digest).unwrap_or_default();
        let tmp = self.layers.join(format!(
            ".tmp-{}-{}-{}",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id(),
            self.counters.unpacks.fetch_add(1, Ordering::Relaxed)
        ));
        let (dir, privileged) = (dir.to_path_buf(), self.privileged);
        let unpack_err = |reason: String| ImageError::Unpack {
            image: image.to_string(),
            digest: desc.digest.clone(),
            reason,
        };
        let tmp2 = tmp.clone();
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let _ = std::fs::remove_dir_all(&tmp2);
            std::fs::create_dir(&tmp2)?;
            let diff_id = unpack::unpack_layer(&blob, compression, &tmp2, privileged)?;
            // The rename below must not publish a layer whose files are still in the page cache
            // only: after a power loss the layer would be there but torn.
            nix::unistd::syncfs(std::fs::File::open(&tmp2)?)?;
            Ok(diff_id)
        })
        .await
        .map_err(|e| unpack_err(format!("the unpack task failed: {e}")))?;
        let cleanup = || {
            let tmp = tmp.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(tmp)).await;
            }
        };
        let actual = match result {
            Ok(actual) => actual,
            Err(e) => {
                cleanup().await;
                return Err(unpack_err(e.to_string()));
            }
        };
        if actual != diff_id {
            cleanup().await;
            return Err(ImageError::DigestMismatch {
                image: image.to_string(),
                what: "layer (uncompressed diff_id)",
                expected: diff_id.to_string(),
                actual,
            });
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            // Another pull unpacked the same layer meanwhile: theirs is as good as ours.
            Err(_) if dir.is_dir() => {
                cleanup().await;
                Ok(())
            }
            Err(e) => {
                cleanup().await;
                Err(ImageError::io("renaming", &tmp)(e))
            }
        }
    }

    /// Removes every image not in `keep`, then every blob, partial download and layer that no
    /// remaining image uses. Waits for running pulls; pulls wait for it.
    pub async fn gc(&self, keep: &[ImageRef]) -> Result<GcReport, ImageError> {
        self.collect(&Keep {
            images: keep.to_vec(),
            ..Keep::default()
        })
        .await
    }

    /// [`gc`](Self::gc) as release pruning runs it: also keeps the layers containers run from and
    /// whatever was used or written within `keep.grace`.
    pub async fn collect(&self, keep: &Keep) -> Result<GcReport, ImageError> {
        let _exclusive = self.gc_lock.write().await;
        let mut report = GcReport::default();
        let mut index = self.index.lock().await;
        let keep_names: BTreeSet<String> = keep.images.iter().map(ImageRef::canonical).collect();
        let keep_digests: BTreeSet<&str> =
            keep.images.iter().filter_map(ImageRef::digest).collect();
        let recent: BTreeSet<String> = {
            let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            used.iter()
                .filter(|(_, at)| at.elapsed() < keep.grace)
                .map(|(name, _)| name.clone())
                .collect()
        };
        // Blobs still being delivered (their image not committed yet).
        let delivering: BTreeSet<String> = {
            let received = self.received.lock().unwrap_or_else(|p| p.into_inner());
            received
                .keys()
                .filter_map(|d| d.strip_prefix("sha256:"))
                .map(str::to_string)
                .collect()
        };
        let before = index.images.len();
        // A kept image keeps every name it has (a tag and its `name@digest` alike).
        let kept_manifests: BTreeSet<String> = index
            .images
            .iter()
            .filter(|(name, rec)| {
                keep_names.contains(*name)
                    || recent.contains(*name)
                    || keep_digests.contains(rec.manifest.as_str())
                    || rec
                        .list
                        .as_deref()
                        .is_some_and(|l| keep_digests.contains(l))
            })
            .map(|(_, rec)| rec.manifest.clone())
            .collect();
        index.images.retain(|name, rec| {
            let kept = kept_manifests.contains(&rec.manifest);
            if !kept {
                report.images.push(name.clone());
            }
            kept
        });
        if index.images.len() != before {
            index.save(&self.index_path)?;
        }

        // What the remaining images use.
        let mut live_blobs: BTreeSet<String> = BTreeSet::new();
        let mut live_layers: BTreeSet<String> = BTreeSet::new();
        for rec in index.images.values() {
            live_blobs.insert(rec.manifest.clone());
            if let Some(l) = &rec.list {
                live_blobs.insert(l.clone());
            }
            let Ok(body) = self.blobs.read(&rec.manifest) else {
                continue;
            };
            let Ok(Parsed::Manifest(m)) = config::parse_manifest(&body) else {
                continue;
            };
            live_blobs.insert(m.config.digest.clone());
            live_blobs.extend(m.layers.iter().map(|l| l.digest.clone()));
            if let Ok(cfg) = self.read_config(&rec.manifest, &m.config.digest) {
                live_layers.extend(
                    cfg.rootfs
                        .diff_ids
                        .iter()
                        .filter_map(|d| d.strip_prefix("sha256:"))
                        .map(str::to_string),
                );
            }
        }
        drop(index);
        let mut live_blobs: BTreeSet<String> = live_blobs
            .iter()
            .filter_map(|d| d.strip_prefix("sha256:"))
            .map(str::to_string)
            .collect();
        live_blobs.extend(delivering);
        live_layers.extend(keep.layers.iter().cloned());
        let grace = keep.grace;
        // Written within the grace period: a pull or delivery in progress may be about to use it.
        let fresh = move |entry: &std::fs::DirEntry| {
            !grace.is_zero()
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < grace)
        };

        let (blob_dir, layer_dir) = (self.blobs.dir().to_path_buf(), self.layers.clone());
        let (blobs, layers) =
            tokio::task::spawn_blocking(move || -> Result<(usize, usize), ImageError> {
                let mut blobs = 0;
                for entry in std::fs::read_dir(&blob_dir)
                    .map_err(ImageError::io("reading", &blob_dir))?
                    .flatten()
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let hex = name.strip_suffix(".partial").unwrap_or(&name);
                    if fresh(&entry) {
                        continue;
                    }
                    if !live_blobs.contains(hex) || hex.len() != name.len() {
                        std::fs::remove_file(entry.path())
                            .map_err(ImageError::io("removing", entry.path()))?;
                        blobs += 1;
                    }
                }
                let mut layers = 0;
                for entry in std::fs::read_dir(&layer_dir)
                    .map_err(ImageError::io("reading", &layer_dir))?
                    .flatten()
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !live_layers.contains(&name) && !fresh(&entry) {
                        std::fs::remove_dir_all(entry.path())
                            .map_err(ImageError::io("removing", entry.path()))?;
                        layers += 1;
                    }
                }
                Ok((blobs, layers))
            })
            .await
            .map_err(|e| ImageError::Io {
                op: "collecting garbage in",
                path: self.root.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        report.blobs = blobs;
        report.layers = layers;
        Ok(report)
    }
}

/// Holds one key of [`ImageStore::in_flight`]; the last holder removes the entry, so the map
/// does not grow with every blob a long-running daemon ever pulled.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody waits. (Clones are made only under this lock.)
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// The credentials for `image`'s registry from `ApplyRequest.registry_auth`, keyed by registry
/// host as users write it; Docker Hub is also found under its other usual names.
pub fn auth_for<'a>(
    auths: &'a std::collections::BTreeMap<String, RegistryAuth>,
    image: &ImageRef,
) -> Option<&'a RegistryAuth> {
    let registry = image.registry();
    auths.get(registry).or_else(|| {
        (registry == "docker.io")
            .then(|| {
                [
                    "index.docker.io",
                    "registry-1.docker.io",
                    "https://index.docker.io/v1/",
                ]
                .iter()
                .find_map(|k| auths.get(*k))
            })
            .flatten()
    })
}

/// Picks this host's entry of a manifest list.
fn choose_platform(image: &str, entries: &[config::IndexEntry]) -> Result<String, ImageError> {
    let host = Platform::host();
    let matching = |e: &&config::IndexEntry| {
        e.platform
            .as_ref()
            .is_some_and(|p| host.matches(&p.os, &p.architecture, p.variant.as_deref()))
    };
    // An exact variant match beats an entry without a variant.
    let exact = entries.iter().filter(matching).find(|e| {
        e.platform.as_ref().and_then(|p| p.variant.as_deref()) == host.variant.as_deref()
    });
    match exact.or_else(|| entries.iter().find(matching)) {
        Some(e) => Ok(e.digest.clone()),
        None => Err(ImageError::NoPlatform {
            image: image.to_string(),
            platform: host.to_string(),
            available: entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A registry failure, with a hint at the usual causes.
fn registry_error(
    image: &str,
    registry: &str,
    insecure: bool,
    has_auth: bool,
    source: OciDistributionError,
) -> ImageError {
    let hint = match &source {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) if has_auth => {
            format!("\nhint: the registry refused the credentials given for {registry}; check them")
        }
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            format!("\nhint: {registry} needs credentials; add them for this registry")
        }
        OciDistributionError::RequestError(_) if !insecure => format!(
            "\nhint: {registry} was contacted over https; if it serves plain http, mark it insecure in the inventory"
        ),
        OciDistributionError::ImageManifestNotFoundError(_) => {
            format!("\nhint: check the image name and tag exist on {registry}")
        }
        _ => String::new(),
    };
    ImageError::Registry {
        image: image.to_string(),
        registry: registry.to_string(),
        source: Box::new(source),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_flight_entries_are_removed_by_their_last_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path()).expect("open");
        let first = store.in_flight("blob x".into()).await;
        let waiter = store.in_flight("blob x".into());
        let (_, second) = tokio::join!(async move { drop(first) }, waiter);
        assert_eq!(
            store.in_flight.lock().expect("map").len(),
            1,
            "held by the second"
        );
        drop(second);
        assert!(store.in_flight.lock().expect("map").is_empty());
    }

    #[test]
    fn docker_hub_credentials_are_found_under_its_usual_names() {
        let auth = RegistryAuth {
            username: "u".into(),
            password: "p".into(),
        };
        let mut auths = std::collections::BTreeMap::new();
        auths.insert("https://index.docker.io/v1/".to_string(), auth.clone());
        auths.insert("ghcr.io".to_string(), auth.clone());
        let hub = ImageRef::parse("busybox").expect("ref");
        assert_eq!(auth_for(&auths, &hub), Some(&auth));
        let ghcr = ImageRef::parse("ghcr.io/o/app:1").expect("ref");
        assert_eq!(auth_for(&auths, &ghcr), Some(&auth));
        let other = ImageRef::parse("quay.io/o/app:1").expect("ref");
        assert_eq!(auth_for(&auths, &other), None);
    }

    #[test]
    fn a_list_without_this_platform_says_what_it_has() {
        let entry = |arch: &str| config::IndexEntry {
            digest: format!("sha256:{}", "a".repeat(64)),
            platform: Some(config::IndexPlatform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
        };
        let err = choose_platform("img", &[entry("s390x-nope"), entry("mips-nope")])
            .expect_err("no match");
        let message = err.to_string();
        assert!(
            message.contains("linux/s390x-nope, linux/mips-nope"),
            "{message}"
        );
        assert!(message.contains(&Platform::host().to_string()), "{message}");
    }
}
