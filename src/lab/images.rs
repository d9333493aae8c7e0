//! The lab registry's test images, built here from `/bin/busybox` of Debian's busybox-static:
//! one gzip tar layer each, an OCI image config and an OCI image manifest, pushed over plain http
//! with `oci-client`.
//!
//! Layers are deterministic (sorted entries, fixed times and owners, gzip without a timestamp), so
//! the same busybox binary always gives the same digests and a second `lab up` pushes nothing.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::Error;

/// The shell image, in each lab's registry: busybox with a link for every applet in `/bin`;
/// default command `sh`.
pub const SHELL_REPOSITORY: &str = "lab/busybox:latest";
/// The HTTP server image, in each lab's registry: busybox `httpd` serving `/www/index.html` on
/// port 80.
pub const HTTPD_REPOSITORY: &str = "lab/httpd:latest";

/// The shell image in the registry at `registry` (`HOST:PORT`, see `Lab::registry`).
pub fn shell_image(registry: &str) -> String {
    format!("{registry}/{SHELL_REPOSITORY}")
}

/// The HTTP server image in the registry at `registry`.
pub fn httpd_image(registry: &str) -> String {
    format!("{registry}/{HTTPD_REPOSITORY}")
}
/// What the HTTP server image serves at `/`.
pub const HTTPD_INDEX: &str = "hello from the compose-fleet lab\n";

const BUSYBOX: &str = "/bin/busybox";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Every entry's modification time: 2000-01-01, so that the layer's bytes never change.
const MTIME: u64 = 946_684_800;

/// An image ready to push: its layer, config and manifest, with their digests.
#[derive(Debug, Clone)]
pub struct Image {
    /// `REGISTRY/REPOSITORY:TAG`.
    pub reference: String,
    /// The gzip-compressed layer.
    pub layer: Vec<u8>,
    /// `sha256:` of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// The image config JSON.
    pub config: Vec<u8>,
    pub manifest: OciImageManifest,
}

impl Image {
    pub fn layer_digest(&self) -> &str {
        &self.manifest.layers[0].digest
    }
    pub fn config_digest(&self) -> &str {
        &self.manifest.config.digest
    }
}

/// One file-system entry of a layer.
enum Entry {
    Dir(&'static str, u32),
    File(String, u32, Vec<u8>),
    Symlink(String, &'static str),
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir(p, _) => p,
            Entry::File(p, _, _) | Entry::Symlink(p, _) => p,
        }
    }
}

/// Builds both test images from the machine's busybox-static, named for `registry`.
pub fn build_all(registry: &str) -> Result<Vec<Image>, Error> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        Error::Env(format!(
            "cannot read {BUSYBOX}: {e}; run scripts/setup.sh (Debian package busybox-static)"
        ))
    })?;
    build_from(&busybox, registry)
}

fn build_from(busybox: &[u8], registry: &str) -> Result<Vec<Image>, Error> {
    let applets = applets(Path::new(BUSYBOX))?;
    let shell = build(
        &shell_image(registry),
        base_entries(busybox, &applets),
        serde_json::json!({ "Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/" }),
    )?;
    let mut entries = base_entries(busybox, &applets);
    entries.push(Entry::Dir("www/", 0o755));
    entries.push(Entry::File(
        "www/index.html".into(),
        0o644,
        HTTPD_INDEX.into(),
    ));
    let httpd = build(
        &httpd_image(registry),
        entries,
        serde_json::json!({
            "Env": [PATH_ENV],
            "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
            "WorkingDir": "/",
            "ExposedPorts": { "80/tcp": {} },
        }),
    )?;
    Ok(vec![shell, httpd])
}

/// The applet names busybox was built with (`busybox --list`).
fn applets(busybox: &Path) -> Result<Vec<String>, Error> {
    let out = super::sys::run(&busybox.to_string_lossy(), &["--list"])?;
    let mut names: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "busybox" && !n.contains('/'))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn base_entries(busybox: &[u8], applets: &[String]) -> Vec<Entry> {
    let mut entries = vec![
        Entry::Dir("bin/", 0o755),
        Entry::File("bin/busybox".into(), 0o755, busybox.to_vec()),
        Entry::Dir("dev/", 0o755),
        Entry::Dir("etc/", 0o755),
        Entry::File(
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
        Entry::File(
            "etc/group".into(),
            0o644,
            b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        ),
        Entry::Dir("proc/", 0o755),
        Entry::Dir("root/", 0o700),
        Entry::Dir("sys/", 0o755),
        Entry::Dir("tmp/", 0o1777),
        Entry::Dir("var/", 0o755),
    ];
    entries.extend(
        applets
            .iter()
            .map(|a| Entry::Symlink(format!("bin/{a}"), "busybox")),
    );
    entries
}

fn build(
    reference: &str,
    mut entries: Vec<Entry>,
    config: serde_json::Value,
) -> Result<Image, Error> {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let tar = tar_bytes(&entries)
        .map_err(|e| Error::Internal(format!("building the layer of {reference}: {e}")))?;
    let diff_id = sha256(&tar);
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&tar)
        .map_err(|e| Error::Internal(format!("compressing the layer of {reference}: {e}")))?;
    let layer = gz
        .finish()
        .map_err(|e| Error::Internal(format!("compressing the layer of {reference}: {e}")))?;
    let config = serde_json::json!({
        "created": "2000-01-01T00:00:00Z",
        "architecture": oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": "2000-01-01T00:00:00Z",
            "created_by": "compose-fleet lab: /bin/busybox of busybox-static",
        }],
    });
    let config = serde_json::to_vec(&config)
        .map_err(|e| Error::Internal(format!("image config of {reference}: {e}")))?;
    let manifest = OciImageManifest {
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            digest: sha256(&config),
            size: config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
            digest: sha256(&layer),
            size: layer.len() as i64,
            ..Default::default()
        }],
        ..Default::default()
    };
    Ok(Image {
        reference: reference.to_string(),
        layer,
        diff_id,
        config,
        manifest,
    })
}

fn tar_bytes(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root")?;
        header.set_groupname("root")?;
        match entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Entry::File(path, mode, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    builder.into_inner()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// `sha256:HEX` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An `oci-client` client that speaks plain http to the lab registry at `registry` only.
pub fn client(registry: &str) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry.to_string()]),
        ..Default::default()
    })
}

/// What the last seeding pushed, so that a warm `lab up` checks the registry without building.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    /// `sha256:` of the busybox binary the images were built from.
    busybox: String,
    /// (reference, config digest, layer digest) of each image.
    images: Vec<(String, String, String)>,
}

/// Makes sure the lab registry holds the test images built from this machine's busybox; builds
/// and pushes only what is missing or different. `stamp` is a file the lab owns. Returns how many
/// images were pushed.
pub fn ensure_seeded(stamp: &Path, registry: &str) -> Result<usize, Error> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        Error::Env(format!(
            "cannot read {BUSYBOX}: {e}; run scripts/setup.sh (Debian package busybox-static)"
        ))
    })?;
    let busybox_digest = sha256(&busybox);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start an async runtime: {e}")))?;
    let client = client(registry);
    let recorded = std::fs::read_to_string(stamp)
        .ok()
        .and_then(|t| serde_json::from_str::<Stamp>(&t).ok())
        .filter(|s| s.busybox == busybox_digest);
    if let Some(recorded) = recorded {
        let all_there = runtime.block_on(async {
            for (reference, config, layer) in &recorded.images {
                if !holds(&client, reference, config, std::slice::from_ref(layer)).await {
                    return false;
                }
            }
            !recorded.images.is_empty()
        });
        if all_there {
            return Ok(0);
        }
    }
    let images = build_from(&busybox, registry)?;
    let pushed = runtime.block_on(push_missing(&client, &images))?;
    let stamp_text = serde_json::to_string_pretty(&Stamp {
        busybox: busybox_digest,
        images: images
            .iter()
            .map(|i| {
                (
                    i.reference.clone(),
                    i.config_digest().to_string(),
                    i.layer_digest().to_string(),
                )
            })
            .collect(),
    })
    .map_err(|e| Error::Internal(format!("image stamp: {e}")))?;
    super::host::write(stamp, &stamp_text, 0o644)?;
    Ok(pushed)
}

/// Whether the registry holds `reference` with exactly this config and these layers.
async fn holds(client: &Client, reference: &str, config: &str, layers: &[String]) -> bool {
    let Ok(parsed) = reference.parse::<Reference>() else {
        return false;
    };
    match client
        .pull_image_manifest(&parsed, &RegistryAuth::Anonymous)
        .await
    {
        Ok((there, _)) => {
            there.config.digest == config
                && there.layers.iter().map(|l| &l.digest).eq(layers.iter())
        }
        Err(_) => false,
    }
}

/// Pushes the images the registry does not already hold with the same digests.
async fn push_missing(client: &Client, images: &[Image]) -> Result<usize, Error> {
    let auth = RegistryAuth::Anonymous;
    let mut pushed = 0;
    for image in images {
        let layers: Vec<String> = image
            .manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect();
        if holds(client, &image.reference, image.config_digest(), &layers).await {
            continue;
        }
        let reference: Reference = image.reference.parse().map_err(|e| {
            Error::Internal(format!("bad image reference {}: {e}", image.reference))
        })?;
        let layer = ImageLayer::new(
            image.layer.clone(),
            IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
            None,
        );
        let config = Config::new(
            image.config.clone(),
            IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            None,
        );
        client
            .push(
                &reference,
                &[layer],
                config,
                &auth,
                Some(image.manifest.clone()),
            )
            .await
            .map_err(|e| {
                Error::Env(format!(
                    "pushing {} to the lab registry: {e}",
                    image.reference
                ))
            })?;
        pushed += 1;
    }
    Ok(pushed)
}
