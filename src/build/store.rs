//! The laptop's content store of built images: whatever a builder emits (an OCI layout, an OCI
//! archive, a legacy `docker save` archive) is read into one place, every blob verified by
//! digest, and each image named by its manifest digest.
//!
//! Where: `$COMPOSE_FLEET_IMAGE_DIR`, else `$XDG_CACHE_HOME/compose-fleet/images`, else
//! `~/.cache/compose-fleet/images` — a cache beside no project, so that projects share layers and
//! nothing is written into the user's working tree. Layout:
//! ```text
//! blobs/sha256/<hex>            manifests, configs, layers; present ⇒ verified
//! refs/<project>/<service>.json the last build of a service: its manifest digest and tags
//! tmp/                          archives being unpacked, blobs being copied
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A descriptor as manifests carry them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The part of an image manifest delivery needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// The config first, then the layers bottom first: the order delivery sends them in.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(&self.layers)
    }
}

/// A service's last build.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BuiltRef {
    /// The manifest digest (`sha256:…`): the image's name. For an image built for several
    /// platforms, the digest of the OCI index listing [`BuiltRef::variants`].
    pub manifest: String,
    /// The `image:` name, when the service has one (a tag of this digest, as compose does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The image's architecture (from its config), to check against the hosts'; empty for an
    /// index (each variant has its own).
    #[serde(default)]
    pub architecture: String,
    /// One image per platform when built for several: each host gets its architecture's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

/// One platform's image of a multi-platform build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// OCI spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// The platform's image manifest.
    pub manifest: String,
}

impl BuiltRef {
    /// The image manifest a host of `arch` (either spelling) runs, if one was built for it. An
    /// image whose config names no architecture runs anywhere it is sent.
    pub fn manifest_for(&self, arch: &str) -> Option<&str> {
        let arch = super::oci_arch(arch);
        if self.variants.is_empty() {
            return (self.architecture.is_empty() || self.architecture == arch)
                .then_some(self.manifest.as_str());
        }
        self.variants
            .iter()
            .find(|v| v.architecture == arch)
            .map(|v| v.manifest.as_str())
    }

    /// The architectures built, OCI spelling.
    pub fn architectures(&self) -> Vec<&str> {
        if self.variants.is_empty() {
            vec![self.architecture.as_str()]
        } else {
            self.variants
                .iter()
                .map(|v| v.architecture.as_str())
                .collect()
        }
    }

    /// Every image manifest of the build (one, or one per variant).
    pub fn manifests(&self) -> Vec<&str> {
        if self.variants.is_empty() {
            vec![self.manifest.as_str()]
        } else {
            self.variants.iter().map(|v| v.manifest.as_str()).collect()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} in {}: {reason}", path.display())]
    Bad {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("blob {expected} in {} does not match its digest (it is {actual}); the builder's output is corrupt — build again", path.display())]
    Digest {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// The local content store.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The store where the environment says (see the module doc).
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("COMPOSE_FLEET_IMAGE_DIR") {
            return PathBuf::from(d);
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| std::env::temp_dir().join("compose-fleet-cache"));
        cache.join("compose-fleet").join("images")
    }

    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let root = root.into();
        for d in ["blobs/sha256", "refs", "tmp"] {
            let dir = root.join(d);
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        Ok(LocalStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A private scratch directory under `tmp/` (removed by the caller).
    pub fn scratch(&self, name: &str) -> Result<PathBuf, StoreError> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .root
            .join("tmp")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(dir)
    }

    /// The file of a blob (present or not); `None` for anything but a sha256 digest.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| self.root.join("blobs/sha256").join(hex))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.blob_path(digest).is_some_and(|p| p.is_file())
    }

    /// Copies `src` into the store, hashing as it streams; refuses it when `expected` is given
    /// and differs. Returns the digest and size.
    pub fn put_file(
        &self,
        src: &Path,
        expected: Option<&str>,
    ) -> Result<(String, u64), StoreError> {
        let tmp = self.scratch("blob")?;
        let part = tmp.join("blob");
        let result = (|| {
            let mut input = std::fs::File::open(src).map_err(io("reading", src))?;
            let mut out = std::fs::File::create(&part).map_err(io("writing", &part))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            let mut size = 0u64;
            loop {
                let n = input.read(&mut buf).map_err(io("reading", src))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(io("writing", &part))?;
                size += n as u64;
            }
            out.sync_all().map_err(io("syncing", &part))?;
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            if let Some(e) = expected {
                if e != digest {
                    return Err(StoreError::Digest {
                        path: src.to_path_buf(),
                        expected: e.to_string(),
                        actual: digest,
                    });
                }
            }
            let dest = self.blob_path(&digest).ok_or_else(|| StoreError::Bad {
                what: "a blob",
                path: src.to_path_buf(),
                reason: "its digest is not sha256".into(),
            })?;
            if !dest.is_file() {
                std::fs::rename(&part, &dest).map_err(io("renaming", &part))?;
            }
            Ok((digest, size))
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    /// Stores bytes held in memory (manifests, configs); returns the digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let dest = self.blob_path(&digest).unwrap_or_default();
        if !dest.is_file() {
            let tmp = self.scratch("bytes")?;
            let part = tmp.join("blob");
            let r = std::fs::write(&part, bytes)
                .and_then(|_| std::fs::rename(&part, &dest))
                .map_err(io("writing", &dest));
            let _ = std::fs::remove_dir_all(&tmp);
            r?;
        }
        Ok(digest)
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest).ok_or_else(|| StoreError::Bad {
            what: "a digest",
            path: self.root.clone(),
            reason: format!("`{digest}` is not a sha256 digest"),
        })?;
        std::fs::read(&path).map_err(io("reading", &path))
    }

    /// The manifest of a stored image: its exact bytes and what it says.
    pub fn manifest(&self, digest: &str) -> Result<(Vec<u8>, Manifest), StoreError> {
        let body = self.read_blob(digest)?;
        let manifest = serde_json::from_slice(&body).map_err(|e| StoreError::Bad {
            what: "an image manifest",
            path: self.blob_path(digest).unwrap_or_default(),
            reason: e.to_string(),
        })?;
        Ok((body, manifest))
    }

    /// Reads what a builder emitted: a directory holding an OCI layout, or a tar archive of one
    /// (`oci-archive`), or a legacy `docker save` archive. Returns the manifest digest and the
    /// image's architecture.
    pub fn import(&self, path: &Path) -> Result<(String, String), StoreError> {
        if path.is_dir() {
            return self.import_dir(path);
        }
        let dir = self.scratch("unpack")?;
        let result = (|| {
            let file = std::fs::File::open(path).map_err(io("reading", path))?;
            // `unpack` keeps entries inside `dir` (no `..`, no absolute paths).
            tar::Archive::new(std::io::BufReader::new(file))
                .unpack(&dir)
                .map_err(io("unpacking", path))?;
            self.import_dir(&dir)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn import_dir(&self, dir: &Path) -> Result<(String, String), StoreError> {
        if dir.join("index.json").is_file() && dir.join("oci-layout").is_file() {
            self.import_layout(dir)
        } else if dir.join("manifest.json").is_file() {
            self.import_docker_save(dir)
        } else {
            Err(StoreError::Bad {
                what: "the builder's output",
                path: dir.to_path_buf(),
                reason: "it is neither an OCI layout (index.json, oci-layout) nor a `docker save` archive (manifest.json)".into(),
            })
        }
    }

    fn import_layout(&self, dir: &Path) -> Result<(String, String), StoreError> {
        let layout_blob = |d: &Descriptor| -> Result<PathBuf, StoreError> {
            let hex = d.digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(StoreError::Bad {
                    what: "a descriptor",
                    path: dir.to_path_buf(),
                    reason: format!("`{}` is not a sha256 digest", d.digest),
                });
            }
            Ok(dir.join("blobs/sha256").join(hex))
        };
        let index_path = dir.join("index.json");
        let index: serde_json::Value = read_json(&index_path)?;
        let mut desc: Descriptor = first_manifest(&index, &index_path)?;
        // An index inside the index (buildx): descend to this machine's platform.
        for _ in 0..4 {
            if desc.media_type != OCI_INDEX && desc.media_type != DOCKER_LIST {
                break;
            }
            let path = layout_blob(&desc)?;
            self.put_file(&path, Some(&desc.digest))?;
            let inner: serde_json::Value = read_json(&path)?;
            desc = first_manifest(&inner, &path)?;
        }
        let manifest_path = layout_blob(&desc)?;
        let (digest, _) = self.put_file(&manifest_path, Some(&desc.digest))?;
        let (_, manifest) = self.manifest(&digest)?;
        for blob in manifest.blobs() {
            let (_, size) = self.put_file(&layout_blob(blob)?, Some(&blob.digest))?;
            if size != blob.size {
                return Err(StoreError::Bad {
                    what: "a blob",
                    path: layout_blob(blob)?,
                    reason: format!("{size} bytes where the manifest says {}", blob.size),
                });
            }
        }
        Ok((digest, self.architecture(&manifest.config.digest)))
    }

    /// `docker save`'s legacy format: `manifest.json` names a config file and uncompressed layer
    /// tarballs; the image gets an OCI manifest written here.
    fn import_docker_save(&self, dir: &Path) -> Result<(String, String), StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            layers: Vec<String>,
        }
        let path = dir.join("manifest.json");
        let entries: Vec<Entry> = read_json(&path)?;
        let entry = entries.into_iter().next().ok_or_else(|| StoreError::Bad {
            what: "a `docker save` manifest",
            path: path.clone(),
            reason: "it lists no image".into(),
        })?;
        let inside = |name: &str| -> Result<PathBuf, StoreError> {
            let p = Path::new(name);
            if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(StoreError::Bad {
                    what: "a `docker save` manifest",
                    path: path.clone(),
                    reason: format!("`{name}` points outside the archive"),
                });
            }
            Ok(dir.join(p))
        };
        let config_path = inside(&entry.config)?;
        let (config_digest, config_size) = self.put_file(&config_path, None)?;
        let config: serde_json::Value = serde_json::from_slice(&self.read_blob(&config_digest)?)
            .map_err(|e| StoreError::Bad {
                what: "an image config",
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != entry.layers.len() {
            return Err(StoreError::Bad {
                what: "a `docker save` archive",
                path: dir.to_path_buf(),
                reason: format!(
                    "{} layers but the config lists {} diff_ids",
                    entry.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let mut layers = Vec::new();
        for (name, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let file = inside(name)?;
            let gzip = is_gzip(&file)?;
            // An uncompressed layer's digest is its diff_id: verify it while copying.
            let expected = (!gzip).then_some(diff_id.as_str());
            let (digest, size) = self.put_file(&file, expected)?;
            layers.push(serde_json::json!({
                "mediaType": if gzip { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
                "digest": digest,
                "size": size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let digest = self.put_bytes(&bytes)?;
        Ok((digest, self.architecture(&config_digest)))
    }

    fn architecture(&self, config_digest: &str) -> String {
        self.read_blob(config_digest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["architecture"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn ref_path(&self, project: &str, service: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(project)
            .join(format!("{service}.json"))
    }

    /// The last build of a service whose image is still whole in the store.
    pub fn built(&self, project: &str, service: &str) -> Option<BuiltRef> {
        let bytes = std::fs::read(self.ref_path(project, service)).ok()?;
        let r: BuiltRef = serde_json::from_slice(&bytes).ok()?;
        if !r.variants.is_empty() && !self.has(&r.manifest) {
            return None;
        }
        for digest in r.manifests() {
            let (_, manifest) = self.manifest(digest).ok()?;
            if !manifest.blobs().all(|b| self.has(&b.digest)) {
                return None;
            }
        }
        Some(r)
    }

    /// Writes the OCI index of a multi-platform build (`(os, architecture, variant, manifest
    /// digest)` each, in that order) and returns its digest.
    pub fn write_index(
        &self,
        variants: &[(String, String, Option<String>, String)],
    ) -> Result<String, StoreError> {
        let mut manifests = Vec::new();
        for (os, arch, variant, digest) in variants {
            let body = self.read_blob(digest)?;
            let media_type = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| OCI_MANIFEST.to_string());
            let mut platform = serde_json::json!({"architecture": arch, "os": os});
            if let Some(v) = variant {
                platform["variant"] = serde_json::Value::String(v.clone());
            }
            manifests.push(serde_json::json!({
                "mediaType": media_type,
                "digest": digest,
                "size": body.len(),
                "platform": platform,
            }));
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        self.put_bytes(&serde_json::to_vec(&index).unwrap_or_default())
    }

    pub fn record(&self, project: &str, service: &str, r: &BuiltRef) -> Result<(), StoreError> {
        let path = self.ref_path(project, service);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(io("writing", &path))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Bad {
        what: "a JSON file",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The first manifest of an index; for a multi-platform index, this machine's platform's.
fn first_manifest(index: &serde_json::Value, path: &Path) -> Result<Descriptor, StoreError> {
    let entries: Vec<Descriptor> = index["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| serde_json::from_value(m.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let arch = super::oci_arch(std::env::consts::ARCH);
    let own = entries.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p["architecture"].as_str() == Some(arch))
    });
    own.or(entries.first())
        .cloned()
        .ok_or_else(|| StoreError::Bad {
            what: "an OCI index",
            path: path.to_path_buf(),
            reason: "it lists no manifest".into(),
        })
}

fn is_gzip(path: &Path) -> Result<bool, StoreError> {
    let mut magic = [0u8; 2];
    let mut f = std::fs::File::open(path).map_err(io("reading", path))?;
    let n = f.read(&mut magic).map_err(io("reading", path))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Writes a legacy `docker save` archive (`manifest.json`, `<id>.json`, `<id>/layer.tar`) of a
/// one-layer image holding `files`: the fixture for the legacy format, made by our own code.
pub fn write_docker_save_fixture(
    out: &Path,
    repo_tag: &str,
    files: &[(&str, &[u8])],
) -> std::io::Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        layer.append_data(&mut h, name, *body)?;
    }
    let layer = layer.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": super::oci_arch(std::env::consts::ARCH),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap_or_default();
    let config_id = hex::encode(Sha256::digest(&config));
    let layer_dir = &diff_id["sha256:".len()..];
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [repo_tag],
        "Layers": [format!("{layer_dir}/layer.tar")],
    }]))
    .unwrap_or_default();
    let mut archive = tar::Builder::new(std::fs::File::create(out)?);
    for (name, body) in [
        ("manifest.json".to_string(), &manifest),
        (format!("{config_id}.json"), &config),
        (format!("{layer_dir}/layer.tar"), &layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        archive.append_data(&mut h, name, body.as_slice())?;
    }
    archive.into_inner()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_docker_save_archive_is_read_into_an_oci_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("save.tar");
        write_docker_save_fixture(&archive, "app:1", &[("hello", b"hi\n")]).expect("fixture");
        let store = LocalStore::open(dir.path().join("store")).expect("open");
        let (digest, arch) = store.import(&archive).expect("imports");
        assert_eq!(arch, super::super::oci_arch(std::env::consts::ARCH));
        let (_, manifest) = store.manifest(&digest).expect("manifest");
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(
            manifest.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert!(manifest.blobs().all(|b| store.has(&b.digest)));
        // Importing again names the same image.
        assert_eq!(store.import(&archive).expect("again").0, digest);
    }

    #[test]
    fn oci_layout_blob_that_does_not_match_its_digest_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
        let put = |bytes: &[u8]| {
            let d = hex::encode(Sha256::digest(bytes));
            std::fs::write(layout.join("blobs/sha256").join(&d), bytes).expect("write");
            format!("sha256:{d}")
        };
        let layer = b"not really a tar, but it is bytes".to_vec();
        let layer_digest = put(&layer);
        let config = br#"{"architecture":"amd64","rootfs":{"diff_ids":[]}}"#;
        let config_digest = put(config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "y", "digest": layer_digest, "size": layer.len()}],
        }))
        .expect("json");
        let manifest_digest = put(&manifest);
        std::fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("write");
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len()}
            ]}))
            .expect("json"),
        )
        .expect("write");
        let store = LocalStore::open(dir.path().join("store")).expect("open");
        assert_eq!(store.import(&layout).expect("imports").0, manifest_digest);
        // Corrupt the layer in the builder's output: the import refuses it.
        let hex = &layer_digest["sha256:".len()..];
        std::fs::write(layout.join("blobs/sha256").join(hex), b"tampered").expect("write");
        let store = LocalStore::open(dir.path().join("store2")).expect("open");
        let err = store.import(&layout).expect_err("refused");
        assert!(matches!(err, StoreError::Digest { .. }), "{err}");
        assert!(!store.has(&layer_digest));
    }
}
