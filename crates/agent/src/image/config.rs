//! The JSON documents of an image: manifest, manifest list (index) and image config, read with
//! only the fields the agent uses; plus [`ImageConfig`], what a container inherits from its image.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What the agent accepts from `GET /v2/<name>/manifests/<ref>`.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Descriptor {
    pub fn to_oci(&self) -> oci_client::manifest::OciDescriptor {
        oci_client::manifest::OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            // Foreign-layer URLs are not followed (as containerd does by default): every blob
            // comes from the registry the user named, over the protocol the inventory allows.
            urls: None,
            ..Default::default()
        }
    }
}

/// A manifest or a manifest list, told apart by `mediaType` or, when absent, by shape.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

pub(crate) enum Parsed {
    Manifest(Manifest),
    Index(Vec<IndexEntry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub digest: String,
    #[serde(default)]
    pub platform: Option<IndexPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct IndexPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

pub(crate) fn parse_manifest(body: &[u8]) -> Result<Parsed, String> {
    let any: AnyManifest =
        serde_json::from_slice(body).map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
    if any.schema_version != Some(2) {
        return Err(format!(
            "manifest schema version {:?} is not supported (only schema 2 / OCI); re-push the \
             image with a current client",
            any.schema_version
        ));
    }
    let is_index = match any.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("manifest media type `{other}` is not supported")),
        None => any.manifests.is_some(),
    };
    if is_index {
        return Ok(Parsed::Index(any.manifests.unwrap_or_default()));
    }
    match (any.config, any.layers) {
        (Some(config), Some(layers)) => Ok(Parsed::Manifest(Manifest { config, layers })),
        _ => Err("the manifest has no config or no layers".into()),
    }
}

/// The OCI image config (`application/vnd.oci.image.config.v1+json`), the parts we read.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    healthcheck: Option<RawHealthcheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHealthcheck {
    #[serde(default)]
    test: Option<Vec<String>>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    start_period: Option<u64>,
    #[serde(default)]
    start_interval: Option<u64>,
    #[serde(default)]
    retries: Option<u64>,
}

/// What a container inherits from its image unless compose overrides it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries, in image order.
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; `None` means root.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// `80/tcp`, `53/udp`, sorted.
    pub exposed_ports: Vec<String>,
    pub healthcheck: Option<ImageHealthcheck>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// OCI architecture and os the image was built for (`amd64`, `linux`).
    pub architecture: String,
    pub os: String,
}

/// The image's `HEALTHCHECK`. Durations absent (or zero in the JSON) mean "use the default".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageHealthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u64>,
}

fn nanos(v: Option<u64>) -> Option<Duration> {
    v.filter(|n| *n > 0).map(Duration::from_nanos)
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl ConfigFile {
    pub fn image_config(&self) -> ImageConfig {
        let empty = RunConfig::default();
        let rc = self.config.as_ref().unwrap_or(&empty);
        ImageConfig {
            entrypoint: rc.entrypoint.clone(),
            cmd: rc.cmd.clone(),
            env: rc.env.clone().unwrap_or_default(),
            user: non_empty(rc.user.clone()),
            working_dir: non_empty(rc.working_dir.clone()),
            exposed_ports: rc
                .exposed_ports
                .as_ref()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default(),
            healthcheck: rc.healthcheck.as_ref().and_then(|h| {
                Some(ImageHealthcheck {
                    test: h.test.clone().filter(|t| !t.is_empty())?,
                    interval: nanos(h.interval),
                    timeout: nanos(h.timeout),
                    start_period: nanos(h.start_period),
                    start_interval: nanos(h.start_interval),
                    retries: h.retries.filter(|r| *r > 0),
                })
            }),
            stop_signal: non_empty(rc.stop_signal.clone()),
            labels: rc.labels.clone().unwrap_or_default(),
            architecture: self.architecture.clone(),
            os: self.os.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_fields_become_image_config() {
        let json = br#"{"architecture":"amd64","os":"linux",
          "config":{"User":"1000:1000","Env":["PATH=/bin"],"Entrypoint":["/bin/sh"],"Cmd":["-c","true"],
            "WorkingDir":"/srv","ExposedPorts":{"80/tcp":{},"53/udp":{}},"StopSignal":"SIGQUIT",
            "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":5000000000,"Retries":3,"Timeout":0}},
          "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let file: ConfigFile = serde_json::from_slice(json).expect("parses");
        let c = file.image_config();
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(
            c.exposed_ports,
            vec!["53/udp".to_string(), "80/tcp".to_string()]
        );
        let h = c.healthcheck.expect("healthcheck");
        assert_eq!(h.interval, Some(Duration::from_secs(5)));
        assert_eq!(h.timeout, None);
        assert_eq!(h.retries, Some(3));
        assert_eq!(file.rootfs.diff_ids, vec!["sha256:aa".to_string()]);
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:a","size":1},"layers":[]}"#;
        assert!(matches!(parse_manifest(m), Ok(Parsed::Manifest(_))));
        let i = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:b","mediaType":"x","size":3,
            "platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
        assert!(matches!(parse_manifest(i), Ok(Parsed::Index(e)) if e.len() == 1));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(parse_manifest(v1).is_err());
    }
}
