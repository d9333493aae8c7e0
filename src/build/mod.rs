//! Images from compose `build:`: built on the user's machine with the builder they have, read
//! into the local content store ([`store`]) and delivered to the hosts over the agent's channel
//! ([`deliver`]) — no registry.
//!
//! Builders, detected in this order unless `--builder` forces one: `docker buildx` (OCI
//! exporter), `docker build` + `docker save`, `podman build`, `buildah bud`. A builder counts only
//! when it works (`docker info` answers: a docker CLI without a daemon is skipped), not merely
//! when its binary exists. What gets built is the working tree as it is.
//!
//! A built image is named by its manifest digest: the pod specs name `<name>@sha256:…`, which a
//! host whose store holds that manifest runs without asking any registry.

pub mod deliver;
pub mod platform;
pub mod progress;
pub mod push;
pub mod rate;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::compose::model::{Project, Service};
use crate::inventory::{BuildSettings, PushMode};
pub use platform::{DeclaredHost, Platform};
pub use store::{BuiltRef, LocalStore, Variant};

/// A builder on the user's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Builder {
    /// `docker buildx build --output type=oci`
    Buildx,
    /// `docker build`, then `docker save`
    Docker,
    /// `podman build`, then `podman save --format oci-archive`
    Podman,
    /// `buildah bud`, then `buildah push … oci-archive:`
    Buildah,
}

impl Builder {
    pub fn name(self) -> &'static str {
        match self {
            Builder::Buildx => "docker buildx",
            Builder::Docker => "docker build",
            Builder::Podman => "podman",
            Builder::Buildah => "buildah",
        }
    }

    /// Whether this builder works here: its probe commands exit 0.
    fn works(self) -> bool {
        let probes: &[&[&str]] = match self {
            Builder::Buildx => &[&["docker", "buildx", "version"], &["docker", "info"]],
            Builder::Docker => &[&["docker", "info"]],
            Builder::Podman => &[&["podman", "info"]],
            Builder::Buildah => &[&["buildah", "--version"]],
        };
        probes.iter().all(|argv| {
            Command::new(argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

/// The first builder that works, or the forced one (checked too).
pub fn detect(forced: Option<Builder>) -> Result<Builder, String> {
    if let Some(b) = forced {
        return if b.works() {
            Ok(b)
        } else {
            Err(format!(
                "--builder {} was asked for but does not work here (its probe command failed)\nhint: check that it is installed{}",
                b.name(),
                if matches!(b, Builder::Buildx | Builder::Docker) { " and that `docker info` reaches a daemon" } else { "" }
            ))
        };
    }
    [Builder::Buildx, Builder::Docker, Builder::Podman, Builder::Buildah]
        .into_iter()
        .find(|b| b.works())
        .ok_or_else(|| {
            "no image builder works on this machine (tried docker buildx, docker build, podman, buildah)\nhint: install one, e.g. `apt-get install buildah`, or start the docker daemon".to_string()
        })
}

/// The OCI name of an architecture as Rust spells it (`x86_64` → `amd64`).
pub fn oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" | "armv7l" | "armv7" => "arm",
        "i686" | "i386" | "x86" => "386",
        "powerpc64le" | "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// One service's build, from its `build:` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Job {
    pub service: String,
    pub context: String,
    pub dockerfile: Option<String>,
    pub dockerfile_inline: Option<String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    pub pull: bool,
    pub network: Option<String>,
    pub extra_hosts: Vec<String>,
    pub shm_size: Option<String>,
    /// The tag the builder gives the image: the service's `image:` or `<project>-<service>`.
    pub tag: String,
    pub tags: Vec<String>,
    /// Registries a `FROM` may pull over plain http (the inventory's insecure registries).
    pub insecure: bool,
    /// `build.platforms`, as written.
    pub build_platforms: Vec<String>,
    /// The service's `platform:`.
    pub service_platform: Option<String>,
    /// The fleet's hosts and the architectures the inventory declares ([`declared_hosts`]); none
    /// is read as one host of this machine's architecture.
    pub hosts: Vec<DeclaredHost>,
    /// `build.secrets`, each with where its content comes from (the top-level `secrets:`).
    pub secrets: Vec<BuildSecret>,
    /// `build.ssh`: `default` or `ID=PATH`.
    pub ssh: Vec<String>,
    pub cache_from: Vec<String>,
    pub cache_to: Vec<String>,
    /// `build.additional_contexts`: name → directory, URL or `docker-image://…`.
    pub additional_contexts: BTreeMap<String, String>,
    /// `build.ulimits` as builders take them: `nofile=1024:2048`.
    pub ulimits: Vec<String>,
    /// `build.provenance` and `build.sbom` (docker buildx attestations), as written.
    pub provenance: Option<String>,
    pub sbom: Option<String>,
    /// The service's placement constraints: a host they keep the service off needs no image.
    pub constraints: Vec<crate::schedule::units::Constraint>,
}

/// A secret a build may mount (`RUN --mount=type=secret,id=ID`): never in the image, never in
/// an argv (the builder reads it from a file).
#[derive(Clone, PartialEq)]
pub struct BuildSecret {
    /// What the Dockerfile names it: the `target`, else the secret's name.
    pub id: String,
    pub source: SecretSource,
}

/// Where a build secret's content is.
#[derive(Clone, PartialEq)]
pub enum SecretSource {
    /// `file:`: a file on this machine.
    File(String),
    /// `environment:`: this environment variable's value.
    Env(String),
    /// `content:`: the text itself.
    Content(String),
}

impl std::fmt::Debug for BuildSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BuildSecret({}, {:?})", self.id, self.source)
    }
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "File({p:?})"),
            SecretSource::Env(v) => write!(f, "Env({v:?})"),
            SecretSource::Content(_) => f.write_str("Content(<redacted>)"),
        }
    }
}

/// The hosts as the platform choice sees them: names and declared architectures.
pub fn declared_hosts(fleet: &crate::inventory::Fleet) -> Vec<DeclaredHost> {
    declared_hosts_with_facts(fleet, None)
}

/// [`declared_hosts`], with the architecture a host reports where the inventory declares none.
pub fn declared_hosts_with_facts(
    fleet: &crate::inventory::Fleet,
    facts: Option<&crate::plan::Facts>,
) -> Vec<DeclaredHost> {
    fleet
        .hosts
        .iter()
        .map(|h| {
            let reported = facts
                .and_then(|f| f.get(&h.name))
                .map(|f| crate::inventory::normalize_arch(&f.arch))
                .filter(|a| !a.is_empty());
            DeclaredHost {
                name: h.name.clone(),
                reported: h.arch.is_none() && reported.is_some(),
                arch: h.arch.clone().or(reported),
                labels: h.labels.clone(),
            }
        })
        .collect()
}

/// Options of `build:` no builder here is given: refused, never ignored (`isolation` is
/// Windows containers'; `privileged` and `entitlements` are docker buildx's elevated builds).
const NOT_YET: &[&str] = &["isolation", "privileged", "entitlements"];

/// The build job of `service`, or why its `build:` cannot be honoured.
pub fn job(
    project: &str,
    service: &Service,
    insecure: bool,
    secrets: &BTreeMap<String, crate::compose::model::FileObject>,
) -> Result<Option<Job>, String> {
    let Some(build) = &service.build else {
        return Ok(None);
    };
    let name = &service.name;
    let mut job = Job {
        service: name.clone(),
        context: build.context.clone().unwrap_or_else(|| ".".into()),
        dockerfile: build.dockerfile.clone(),
        tag: service
            .image
            .clone()
            .unwrap_or_else(|| format!("{project}-{name}")),
        insecure,
        service_platform: service.platform.clone(),
        // One that does not parse is the scheduler's to report.
        constraints: service
            .deploy
            .as_ref()
            .map(|d| &d.placement.constraints[..])
            .unwrap_or_default()
            .iter()
            .filter_map(|c| crate::schedule::units::parse_constraint(c).ok())
            .collect(),
        ..Job::default()
    };
    let string = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let map = |v: &serde_json::Value| -> BTreeMap<String, String> {
        match v {
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), string(v))).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|i| i.as_str())
                .map(|s| match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (s.to_string(), String::new()),
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::Array(a) => a.iter().map(string).collect(),
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}:{}", string(v)))
                .collect(),
            other => vec![string(other)],
        }
    };
    for (key, value) in &build.extra {
        match key.as_str() {
            "args" => job.args = map(value),
            "dockerfile_inline" => job.dockerfile_inline = Some(string(value)),
            "target" => job.target = Some(string(value)),
            "labels" => job.labels = map(value),
            "no_cache" => job.no_cache = value.as_bool().unwrap_or(false),
            "pull" => job.pull = value.as_bool().unwrap_or(false),
            "network" => job.network = Some(string(value)),
            "extra_hosts" => {
                // compose writes `host:ip` or `host=ip`; builders take `host:ip`.
                job.extra_hosts = list(value)
                    .into_iter()
                    .map(|h| h.replacen('=', ":", 1))
                    .collect()
            }
            "shm_size" => job.shm_size = Some(string(value)),
            "tags" => job.tags = list(value),
            "platforms" => job.build_platforms = list(value),
            "secrets" => job.secrets = build_secrets(name, value, secrets)?,
            // Normalized to `default` or `ID: PATH`; builders take `ID=PATH`.
            "ssh" => {
                job.ssh = list(value)
                    .into_iter()
                    .map(|e| match e.split_once(": ") {
                        Some((id, path)) => format!("{id}={path}"),
                        None => e,
                    })
                    .collect()
            }
            "cache_from" => job.cache_from = list(value),
            "cache_to" => job.cache_to = list(value),
            "additional_contexts" => job.additional_contexts = map(value),
            "ulimits" => job.ulimits = ulimits(name, value)?,
            "provenance" => job.provenance = Some(string(value)),
            "sbom" => job.sbom = Some(string(value)),
            k if NOT_YET.contains(&k) => {
                return Err(format!(
                    "service `{name}`: `build.{k}` is not supported by compose-fleet's builds yet\nhint: remove it, or build and push the image yourself and name it in `image:`"
                ))
            }
            k if k.starts_with("x-") => {}
            k => {
                return Err(format!(
                    "service `{name}`: `build.{k}` is not a build option compose-fleet knows"
                ))
            }
        }
    }
    if job.dockerfile.is_some() && job.dockerfile_inline.is_some() {
        return Err(format!(
            "service `{name}`: `build` has both `dockerfile` and `dockerfile_inline`; keep one"
        ));
    }
    Ok(Some(job))
}

/// `build.secrets` (names, or `{source, target}`) with where each one's content is.
fn build_secrets(
    service: &str,
    value: &serde_json::Value,
    defined: &BTreeMap<String, crate::compose::model::FileObject>,
) -> Result<Vec<BuildSecret>, String> {
    let mut out = Vec::new();
    for item in value.as_array().into_iter().flatten() {
        let (source, target) = match item {
            serde_json::Value::String(s) => (s.clone(), None),
            other => (
                other["source"].as_str().unwrap_or_default().to_string(),
                other["target"].as_str().map(str::to_string),
            ),
        };
        let Some(object) = defined.get(&source) else {
            return Err(format!(
                "service `{service}`: `build.secrets` names `{source}`, which the top-level `secrets:` does not define"
            ));
        };
        let from = match (&object.file, &object.environment, &object.content) {
            (Some(f), _, _) => SecretSource::File(f.clone()),
            (_, Some(e), _) => SecretSource::Env(e.clone()),
            (_, _, Some(c)) => SecretSource::Content(c.clone()),
            _ => {
                return Err(format!(
                    "service `{service}`: build secret `{source}` has no `file`, `environment` or `content` (an `external` secret cannot be read on this machine)"
                ))
            }
        };
        out.push(BuildSecret {
            id: target.unwrap_or(source),
            source: from,
        });
    }
    Ok(out)
}

/// `build.ulimits` (`nofile: 1024` or `nofile: {soft: 1024, hard: 2048}`) as `nofile=1024:2048`.
fn ulimits(service: &str, value: &serde_json::Value) -> Result<Vec<String>, String> {
    let bad = |k: &str| {
        format!(
            "service `{service}`: `build.ulimits.{k}` must be a number or {{ soft: N, hard: N }}"
        )
    };
    let mut out = Vec::new();
    for (k, v) in value.as_object().into_iter().flatten() {
        let number = |v: &serde_json::Value| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        };
        let limit = match v {
            serde_json::Value::Object(m) => match (
                m.get("soft").and_then(number),
                m.get("hard").and_then(number),
            ) {
                (Some(soft), Some(hard)) => format!("{k}={soft}:{hard}"),
                _ => return Err(bad(k)),
            },
            v => format!("{k}={}", number(v).ok_or_else(|| bad(k))?),
        };
        out.push(limit);
    }
    Ok(out)
}

/// Refuses, naming the option and the builder, what `builder` cannot do with `job`. Pure.
pub fn check_builder(builder: Builder, job: &Job) -> Result<(), String> {
    let name = &job.service;
    let refuse = |what: &str, why: &str| {
        Err(format!(
            "service `{name}`: `build.{what}` cannot be honoured by {}: {why}\nhint: pick another builder with `--builder`, or remove the option",
            builder.name()
        ))
    };
    if builder == Builder::Docker {
        if !job.cache_to.is_empty() {
            return refuse(
                "cache_to",
                "`docker build` exports no cache (docker buildx does)",
            );
        }
        if !job.additional_contexts.is_empty() {
            return refuse(
                "additional_contexts",
                "`docker build` takes one context (docker buildx and buildah take more)",
            );
        }
    }
    if matches!(
        builder,
        Builder::Buildah | Builder::Podman | Builder::Docker
    ) {
        for (what, entries) in [("cache_from", &job.cache_from), ("cache_to", &job.cache_to)] {
            for e in entries {
                if e.contains('=') && cache_ref(e).is_none() {
                    return refuse(
                        what,
                        &format!("`{e}` is a docker buildx cache exporter; this builder takes an image repository (`registry.example/app/cache` or `type=registry,ref=…`)"),
                    );
                }
            }
        }
        for (what, value) in [("provenance", &job.provenance), ("sbom", &job.sbom)] {
            if value.as_deref().is_some_and(|v| v != "false" && v != "0") {
                return refuse(what, "attestations are made by docker buildx only");
            }
        }
    }
    if let Some((k, _)) = job
        .additional_contexts
        .iter()
        .find(|(_, v)| v.starts_with("service:") || v.starts_with("target:"))
    {
        return refuse(
            "additional_contexts",
            &format!("`{k}` names another service's build, which compose-fleet does not chain yet; build that image first and name it `docker-image://IMAGE`"),
        );
    }
    Ok(())
}

/// The image repository of a cache entry: itself, or `ref=` of a `type=registry` one.
fn cache_ref(entry: &str) -> Option<&str> {
    if !entry.contains('=') {
        return Some(entry);
    }
    let mut kind = None;
    let mut reference = None;
    for part in entry.split(',') {
        match part.split_once('=') {
            Some(("type", t)) => kind = Some(t),
            Some(("ref", r)) => reference = Some(r),
            _ => {}
        }
    }
    match kind {
        None | Some("registry") => reference,
        _ => None,
    }
}

/// The command lines that build `job` with `builder` and export it to `out` (an archive path),
/// `dockerfile` being the file to use (the inline one written out by the caller). Pure.
pub fn commands(
    builder: Builder,
    job: &Job,
    dockerfile: Option<&Path>,
    platform: Option<&Platform>,
    secret_files: &[(String, PathBuf)],
    out: &Path,
) -> Vec<Vec<String>> {
    let mut build: Vec<String> = match builder {
        Builder::Buildx => vec!["docker".into(), "buildx".into(), "build".into()],
        Builder::Docker => vec!["docker".into(), "build".into()],
        Builder::Podman => vec!["podman".into(), "build".into(), "--layers".into()],
        // chroot isolation: no daemon, no user namespaces needed; --layers caches each step so
        // an unchanged step makes the same layer (only a changed one is delivered again).
        Builder::Buildah => vec![
            "buildah".into(),
            "bud".into(),
            "--isolation".into(),
            "chroot".into(),
            "--layers".into(),
        ],
    };
    let mut opt = |flag: &str, value: &str| {
        build.push(flag.to_string());
        build.push(value.to_string());
    };
    if let Some(f) = dockerfile {
        opt("-f", &f.display().to_string());
    }
    if let Some(p) = platform {
        opt("--platform", &p.text());
    }
    for (k, v) in &job.args {
        opt("--build-arg", &format!("{k}={v}"));
    }
    if let Some(t) = &job.target {
        opt("--target", t);
    }
    for (k, v) in &job.labels {
        opt("--label", &format!("{k}={v}"));
    }
    if let Some(n) = &job.network {
        opt("--network", n);
    }
    for h in &job.extra_hosts {
        opt("--add-host", h);
    }
    if let Some(s) = &job.shm_size {
        opt("--shm-size", s);
    }
    for (id, file) in secret_files {
        opt("--secret", &format!("id={id},src={}", file.display()));
    }
    for s in &job.ssh {
        opt("--ssh", s);
    }
    let buildkit = builder == Builder::Buildx;
    for c in &job.cache_from {
        opt(
            "--cache-from",
            if buildkit {
                c
            } else {
                cache_ref(c).unwrap_or(c)
            },
        );
    }
    for c in &job.cache_to {
        opt(
            "--cache-to",
            if buildkit {
                c
            } else {
                cache_ref(c).unwrap_or(c)
            },
        );
    }
    for (k, v) in &job.additional_contexts {
        opt("--build-context", &format!("{k}={v}"));
    }
    for u in &job.ulimits {
        opt("--ulimit", u);
    }
    if buildkit {
        if let Some(p) = &job.provenance {
            opt("--provenance", p);
        }
        if let Some(s) = &job.sbom {
            opt("--sbom", s);
        }
    }
    opt("-t", &job.tag);
    for t in &job.tags {
        opt("-t", t);
    }
    if job.no_cache {
        build.push("--no-cache".into());
    }
    if job.pull {
        build.push("--pull".into());
    }
    if job.insecure && matches!(builder, Builder::Podman | Builder::Buildah) {
        build.push("--tls-verify=false".into());
    }
    let out_s = out.display().to_string();
    match builder {
        Builder::Buildx => {
            build.push("--output".into());
            build.push(format!("type=oci,dest={out_s}"));
            build.push(job.context.clone());
            vec![build]
        }
        Builder::Docker => {
            build.push(job.context.clone());
            let save = vec![
                "docker".into(),
                "save".into(),
                "-o".into(),
                out_s,
                job.tag.clone(),
            ];
            vec![build, save]
        }
        Builder::Podman => {
            build.push(job.context.clone());
            let save = vec![
                "podman".into(),
                "save".into(),
                "--format".into(),
                "oci-archive".into(),
                "-o".into(),
                out_s,
                job.tag.clone(),
            ];
            vec![build, save]
        }
        Builder::Buildah => {
            build.push(job.context.clone());
            let push = vec![
                "buildah".into(),
                "push".into(),
                job.tag.clone(),
                format!("oci-archive:{out_s}"),
            ];
            vec![build, push]
        }
    }
}

/// The platforms `job` is built for with `builder` here ([`platform::choose`]).
pub fn platforms_for(
    job: &Job,
    can: &platform::Capability,
    builder: &str,
) -> Result<Vec<Platform>, String> {
    let hosts = if job.hosts.is_empty() {
        vec![DeclaredHost {
            name: "this machine".into(),
            arch: None,
            reported: false,
            labels: BTreeMap::new(),
        }]
    } else {
        // Only the hosts the service's constraints allow: no image for one it never runs on.
        job.hosts
            .iter()
            .filter(|h| job.constraints.iter().all(|c| platform::allows(c, h)))
            .cloned()
            .collect()
    };
    platform::choose(
        &job.service,
        &job.build_platforms,
        job.service_platform.as_deref(),
        &hosts,
        &Platform::native(),
        can,
        builder,
    )
}

/// Whether `built` has an image for every platform `job` needs, `can` being what the builder
/// produces (`None`: any platform, the question before any builder is probed).
fn covers(built: &BuiltRef, job: &Job, can: Option<&platform::Capability>) -> bool {
    let any = platform::Capability {
        arches: job
            .hosts
            .iter()
            .filter_map(|h| h.arch.as_deref().map(|a| oci_arch(a).to_string()))
            .chain(
                job.build_platforms
                    .iter()
                    .chain(&job.service_platform)
                    .filter_map(|p| Platform::parse(p).ok().map(|p| p.arch)),
            )
            .chain([Platform::native().arch])
            .collect(),
        source: String::new(),
    };
    platforms_for(job, can.unwrap_or(&any), "")
        .is_ok_and(|ps| ps.iter().all(|p| built.manifest_for(&p.arch).is_some()))
}

/// Builds `job` and reads the result into `store`; returns what was recorded for the service.
/// The builder's own output goes to stderr as it comes. A job for several platforms is built
/// once per platform and recorded as an OCI index of the images.
pub fn build(
    builder: Builder,
    project: &str,
    job: &Job,
    store: &LocalStore,
) -> Result<BuiltRef, String> {
    check_builder(builder, job)?;
    let can = platform::capability(builder);
    let platforms = platforms_for(job, &can, builder.name())?;
    let native = Platform::native();
    // A plain build for this machine passes no `--platform` (older builders lack the flag).
    let implicit = platforms == [native.clone()]
        && job.build_platforms.is_empty()
        && job.service_platform.is_none();
    let mut variants = Vec::new();
    for p in &platforms {
        let (manifest, arch) = build_one(builder, job, (!implicit).then_some(p), store)?;
        if !arch.is_empty() && arch != p.arch {
            return Err(format!(
                "building service `{}` for {} made an image for {arch}: {} does not honour `--platform`\nhint: use another builder (`--builder buildah`)",
                job.service,
                p.text(),
                builder.name()
            ));
        }
        variants.push((p.clone(), manifest, arch));
    }
    let mut tags = vec![];
    if job.tag != format!("{project}-{}", job.service) {
        tags.push(job.tag.clone());
    }
    tags.extend(job.tags.iter().cloned());
    let built = match variants.as_slice() {
        [(_, manifest, architecture)] => BuiltRef {
            manifest: manifest.clone(),
            tags,
            architecture: architecture.clone(),
            variants: vec![],
        },
        _ => {
            let index = store
                .write_index(
                    &variants
                        .iter()
                        .map(|(p, m, _)| {
                            (p.os.clone(), p.arch.clone(), p.variant.clone(), m.clone())
                        })
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| e.to_string())?;
            BuiltRef {
                manifest: index,
                tags,
                architecture: String::new(),
                variants: variants
                    .iter()
                    .map(|(p, m, _)| Variant {
                        architecture: p.arch.clone(),
                        manifest: m.clone(),
                    })
                    .collect(),
            }
        }
    };
    store
        .record(project, &job.service, &built)
        .map_err(|e| e.to_string())?;
    Ok(built)
}

/// The file each build secret is read from: its own `file:`, or one written (mode 0600, in the
/// build's scratch directory, removed with it) for `environment:` and `content:` — the builder
/// reads the secret from there, never from its argv.
fn secret_files(job: &Job, scratch: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut out = Vec::new();
    for (i, secret) in job.secrets.iter().enumerate() {
        let text = match &secret.source {
            SecretSource::File(f) => {
                out.push((secret.id.clone(), PathBuf::from(f)));
                continue;
            }
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                format!(
                    "service `{}`: build secret `{}` comes from the environment variable `{var}`, which is not set",
                    job.service, secret.id
                )
            })?,
            SecretSource::Content(c) => c.clone(),
        };
        let path = scratch.join(format!("secret-{i}"));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("writing a build secret to {}: {e}", path.display()))?;
        out.push((secret.id.clone(), path));
    }
    Ok(out)
}

/// One builder run for one platform (`None`: the builder's default); returns the image manifest
/// digest and the architecture its config names.
fn build_one(
    builder: Builder,
    job: &Job,
    platform: Option<&Platform>,
    store: &LocalStore,
) -> Result<(String, String), String> {
    let scratch = store.scratch("build").map_err(|e| e.to_string())?;
    let result = (|| {
        let dockerfile: Option<PathBuf> = match (&job.dockerfile_inline, &job.dockerfile) {
            (Some(inline), _) => {
                let p = scratch.join("Dockerfile");
                std::fs::write(&p, inline).map_err(|e| format!("writing {}: {e}", p.display()))?;
                Some(p)
            }
            (None, Some(f)) if !job.context.contains("://") => {
                Some(Path::new(&job.context).join(f))
            }
            (None, Some(f)) => Some(PathBuf::from(f)),
            (None, None) => None,
        };
        let secret_files = secret_files(job, &scratch)?;
        let out = scratch.join("image.tar");
        for argv in commands(
            builder,
            job,
            dockerfile.as_deref(),
            platform,
            &secret_files,
            &out,
        ) {
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .stdout(std::process::Stdio::from(std::io::stderr()))
                .status()
                .map_err(|e| format!("running {}: {e}", argv[0]))?;
            if !status.success() {
                return Err(format!(
                    "building service `{}` failed: `{}` exited with {status}\nhint: its output is above",
                    job.service,
                    argv.join(" ")
                ));
            }
        }
        store
            .import(&out)
            .map_err(|e| format!("reading the image built for service `{}`: {e}", job.service))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The reference pod specs carry for a built image: the `image:` name (tag dropped) or
/// `localhost/<project>-<service>`, pinned to the manifest digest.
pub fn pinned_reference(project: &str, service: &Service, digest: &str) -> String {
    let name = match &service.image {
        Some(image) => name_and_tag(image).0.to_string(),
        None => format!("localhost/{project}-{}", service.name),
    };
    format!("{name}@{digest}")
}

/// An image reference's name and tag, its digest dropped: `host:5000/a/b:1@sha256:…` is
/// (`host:5000/a/b`, `Some("1")`). A `:` after the last `/` is a tag; one before it is a
/// registry's port.
pub fn name_and_tag(reference: &str) -> (&str, Option<&str>) {
    let plain = reference.split('@').next().unwrap_or(reference);
    let slash = plain.rfind('/').map_or(0, |i| i + 1);
    match plain[slash..].rfind(':') {
        Some(colon) => (&plain[..slash + colon], Some(&plain[slash + colon + 1..])),
        None => (plain, None),
    }
}

/// Where a built service's image goes (the inventory's `build:`): `None` over each host's SSH
/// channel, else the registry name it is pushed to, `HOST[:PORT]/name:tag`. Pure.
pub fn push_target(
    via: &BuildSettings,
    project: &str,
    service: &Service,
) -> Result<Option<String>, String> {
    if via.push == PushMode::Direct {
        return Ok(None);
    }
    push::target(
        via.registry.as_deref(),
        project,
        &service.name,
        service.image.as_deref(),
    )
    .map(Some)
    .map_err(|_| {
        format!(
            "service `{}` is to be pushed to a registry (`push: registry` in the inventory's `build:`), \
             but its `image:` names none and the inventory's `build:` has no `registry:`\nhint: \
             set `build: {{ push: registry, registry: HOST[:PORT]/prefix }}` in the inventory, or \
             `image: registry.example.org/{project}/{}:TAG`",
            service.name, service.name
        )
    })
}

/// The reference pod specs carry for a built image, pinned to `digest`: [`pinned_reference`],
/// or with `push: registry` the registry's name for it (what the hosts pull). Pure.
pub fn image_reference(
    via: &BuildSettings,
    project: &str,
    service: &Service,
    digest: &str,
) -> Result<String, String> {
    Ok(match push_target(via, project, service)? {
        None => pinned_reference(project, service, digest),
        Some(target) => format!("{}@{digest}", name_and_tag(&target).0),
    })
}

/// A built image `up` delivers: the service, its pinned reference and the local build.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalImage {
    pub service: String,
    pub reference: String,
    pub built: BuiltRef,
    /// With `push: registry`: the registry name (`HOST/name:tag`) it is pushed to, from which
    /// the hosts pull `reference`; `None`: delivered over SSH.
    pub push_to: Option<String>,
}

/// Points the services with `build:` at their last recorded builds, building nothing: for
/// `up --dry-run` and `plan`, which change nothing. A service never built keeps no image (the
/// plan then says it must be built first); one whose registry cannot be named keeps its local
/// name (`up` refuses it).
pub fn pin_recorded(project: &mut Project, store: &LocalStore, via: &BuildSettings) {
    let name = project.name.clone();
    for (service_name, service) in project.services.iter_mut() {
        if service.build.is_none() {
            continue;
        }
        if let Some(b) = store.built(&name, service_name) {
            let reference = image_reference(via, &name, service, &b.manifest)
                .unwrap_or_else(|_| pinned_reference(&name, service, &b.manifest));
            service.image = Some(reference);
        }
    }
}

/// One line per service with `build:` saying where its image goes: for `plan` and
/// `up --dry-run`. Pure.
pub fn routes(project: &Project, via: &BuildSettings) -> Vec<String> {
    project
        .services
        .values()
        .filter(|s| s.build.is_some())
        .map(|s| match push_target(via, &project.name, s) {
            Ok(None) => format!(
                "service `{}`: built here, its blobs sent to its hosts over SSH (no registry)",
                s.name
            ),
            Ok(Some(target)) => format!(
                "service `{}`: built here, pushed to {target}; its hosts pull it from there",
                s.name
            ),
            Err(e) => e.lines().next().unwrap_or_default().to_string(),
        })
        .collect()
}

/// Builds what `up` needs and points the services at their built images: each service with
/// `build:` (among `only`, when given) is built when `rebuild` is set or when the store holds no
/// build of it; its `image` becomes the pinned reference. Returns the images to deliver.
// The run's options, each from a different source (flags, inventory, facts, store).
#[allow(clippy::too_many_arguments)]
pub fn prepare_up(
    project: &mut Project,
    only: &[String],
    rebuild: bool,
    forced: Option<Builder>,
    insecure: bool,
    hosts: &[DeclaredHost],
    store: &LocalStore,
    via: &BuildSettings,
) -> Result<Vec<LocalImage>, String> {
    let mut builder: Option<(Builder, platform::Capability)> = None;
    let mut images = Vec::new();
    let name = project.name.clone();
    let secrets = project.secrets.clone();
    for (service_name, service) in project.services.iter_mut() {
        if !only.is_empty() && !only.contains(service_name) {
            if service.image.is_none() {
                // Not converged in this run, but `prepare` still plans its pods' specs.
                if let Some(b) = store.built(&name, service_name) {
                    let reference = image_reference(via, &name, service, &b.manifest)?;
                    service.image = Some(reference);
                }
            }
            continue;
        }
        let Some(mut job) = job(&name, service, insecure, &secrets)? else {
            continue;
        };
        // Where it goes is known before anything is built.
        let push_to = push_target(via, &name, service)?;
        job.hosts = hosts.to_vec();
        let mut builder_here = || -> Result<(Builder, platform::Capability), String> {
            if let Some(b) = &builder {
                return Ok(b.clone());
            }
            let b = detect(forced)?;
            Ok(builder.insert((b, platform::capability(b))).clone())
        };
        // The last build serves while it has an image for every platform needed (asking the
        // builder what it can produce only when it lacks one).
        let reuse = match (rebuild, store.built(&name, service_name)) {
            (false, Some(b)) if covers(&b, &job, None) => Some(b),
            (false, Some(b)) => {
                let (_, can) = builder_here()?;
                covers(&b, &job, Some(&can)).then_some(b)
            }
            _ => None,
        };
        let built = match reuse {
            Some(b) => b,
            None => {
                let (b, _) = builder_here()?;
                crate::output::status(&format!(
                    "building service `{service_name}` with {}",
                    b.name()
                ));
                build(b, &name, &job, store)?
            }
        };
        let reference = image_reference(via, &name, service, &built.manifest)?;
        service.image = Some(reference.clone());
        images.push(LocalImage {
            service: service_name.clone(),
            reference,
            built,
            push_to,
        });
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(image: Option<&str>, extra: serde_json::Value) -> Service {
        let build = crate::compose::model::Build {
            context: Some("/src/app".into()),
            dockerfile: Some("Dockerfile.web".into()),
            extra: serde_json::from_value(extra).expect("map"),
        };
        Service {
            name: "web".into(),
            image: image.map(str::to_string),
            build: Some(build),
            ..Service::default()
        }
    }

    #[test]
    fn a_reference_splits_into_name_and_tag_past_a_port_and_a_digest() {
        assert_eq!(name_and_tag("busybox"), ("busybox", None));
        assert_eq!(name_and_tag("busybox:1.36"), ("busybox", Some("1.36")));
        assert_eq!(
            name_and_tag("10.250.0.1:5000/lab/httpd"),
            ("10.250.0.1:5000/lab/httpd", None)
        );
        assert_eq!(
            name_and_tag("10.250.0.1:5000/lab/httpd:latest@sha256:ab"),
            ("10.250.0.1:5000/lab/httpd", Some("latest"))
        );
        assert_eq!(
            name_and_tag("localhost/shop-web@sha256:ab"),
            ("localhost/shop-web", None)
        );
    }

    #[test]
    fn push_registry_names_the_registry_reference_the_hosts_pull() {
        let registry = BuildSettings {
            push: PushMode::Registry,
            registry: Some("10.250.0.1:5000/team".into()),
        };
        let digest = "sha256:ab";
        let web = service(Some("example.org/acme/web:1.2"), serde_json::json!({}));
        assert_eq!(
            image_reference(&registry, "shop", &web, digest),
            Ok("10.250.0.1:5000/team/web@sha256:ab".into())
        );
        assert_eq!(
            push_target(&registry, "shop", &web),
            Ok(Some("10.250.0.1:5000/team/web:1.2".into()))
        );
        let unnamed = service(None, serde_json::json!({}));
        assert_eq!(
            image_reference(&registry, "shop", &unnamed, digest),
            Ok("10.250.0.1:5000/team/shop-web@sha256:ab".into())
        );
        // Without `registry:`, `image:` must name one.
        let own = BuildSettings {
            push: PushMode::Registry,
            registry: None,
        };
        assert_eq!(
            image_reference(&own, "shop", &web, digest),
            Ok("example.org/acme/web@sha256:ab".into())
        );
        let err = image_reference(&own, "shop", &unnamed, digest).expect_err("no registry");
        assert!(err.contains("`web`") && err.contains("registry:"), "{err}");
        // `direct` keeps the local name.
        assert_eq!(
            image_reference(&BuildSettings::default(), "shop", &unnamed, digest),
            Ok("localhost/shop-web@sha256:ab".into())
        );
    }

    #[test]
    fn buildah_command_carries_compose_build_options() {
        let s = service(
            Some("registry.example:5000/team/web:1.2"),
            serde_json::json!({
                "args": {"GREETING": "hi"}, "target": "final", "labels": {"a": "b"},
                "no_cache": true, "network": "host", "extra_hosts": ["db=10.0.0.2"],
                "shm_size": "64m", "tags": ["web:latest"]
            }),
        );
        let job = job("shop", &s, true, &BTreeMap::new())
            .expect("ok")
            .expect("has build");
        let cmds = commands(
            Builder::Buildah,
            &job,
            Some(Path::new("/src/app/Dockerfile.web")),
            None,
            &[],
            Path::new("/tmp/out.tar"),
        );
        assert_eq!(
            cmds[0].join(" "),
            "buildah bud --isolation chroot --layers -f /src/app/Dockerfile.web --build-arg GREETING=hi \
             --target final --label a=b --network host --add-host db:10.0.0.2 --shm-size 64m \
             -t registry.example:5000/team/web:1.2 -t web:latest --no-cache --tls-verify=false /src/app"
        );
        assert_eq!(
            cmds[1].join(" "),
            "buildah push registry.example:5000/team/web:1.2 oci-archive:/tmp/out.tar"
        );
        assert_eq!(
            pinned_reference("shop", &s, "sha256:ab"),
            "registry.example:5000/team/web@sha256:ab"
        );
        let plain = service(None, serde_json::json!({}));
        assert_eq!(
            pinned_reference("shop", &plain, "sha256:ab"),
            "localhost/shop-web@sha256:ab"
        );
    }

    #[test]
    fn build_options_no_builder_gets_are_refused_by_name() {
        let s = service(None, serde_json::json!({"privileged": true}));
        let err = job("shop", &s, false, &BTreeMap::new()).expect_err("refused");
        assert!(err.contains("`build.privileged` is not supported"), "{err}");
    }

    #[test]
    fn secrets_ssh_caches_contexts_and_ulimits_reach_buildah() {
        use crate::compose::model::FileObject;
        let s = service(
            None,
            serde_json::json!({
                "secrets": ["npmrc", {"source": "token", "target": "api_token"}],
                "ssh": ["default", "github: /home/u/.ssh/id_ed25519"],
                "cache_from": ["type=registry,ref=r.example/app/cache"],
                "cache_to": ["r.example/app/cache"],
                "additional_contexts": {"assets": "/src/assets", "base": "docker-image://alpine:3"},
                "ulimits": {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 512},
                "platforms": ["linux/amd64"],
                "provenance": "false"
            }),
        );
        let secrets: BTreeMap<String, FileObject> = [
            (
                "npmrc".to_string(),
                FileObject {
                    file: Some("/src/.npmrc".into()),
                    ..FileObject::default()
                },
            ),
            (
                "token".to_string(),
                FileObject {
                    environment: Some("API_TOKEN".into()),
                    ..FileObject::default()
                },
            ),
        ]
        .into();
        let job = job("shop", &s, false, &secrets)
            .expect("ok")
            .expect("has build");
        assert_eq!(job.secrets[1].id, "api_token");
        assert_eq!(job.secrets[1].source, SecretSource::Env("API_TOKEN".into()));
        check_builder(Builder::Buildah, &job).expect("buildah does all of it");
        let files = [
            ("npmrc".to_string(), PathBuf::from("/src/.npmrc")),
            ("api_token".to_string(), PathBuf::from("/tmp/b/secret-1")),
        ];
        let cmd = commands(
            Builder::Buildah,
            &job,
            None,
            Some(&Platform::parse("linux/amd64").expect("platform")),
            &files,
            Path::new("/tmp/out.tar"),
        )[0]
        .join(" ");
        for part in [
            "--platform linux/amd64",
            "--secret id=npmrc,src=/src/.npmrc --secret id=api_token,src=/tmp/b/secret-1",
            "--ssh default --ssh github=/home/u/.ssh/id_ed25519",
            "--cache-from r.example/app/cache --cache-to r.example/app/cache",
            "--build-context assets=/src/assets --build-context base=docker-image://alpine:3",
            "--ulimit nofile=1024:2048 --ulimit nproc=512",
        ] {
            assert!(cmd.contains(part), "{part} in {cmd}");
        }
        assert!(!cmd.contains("provenance"), "{cmd}");
        // The secret's value is in no argv; only the file it is read from.
        assert!(!cmd.contains("API_TOKEN"), "{cmd}");
    }

    #[test]
    fn what_a_builder_cannot_do_is_refused_naming_option_and_builder() {
        let with = |extra: serde_json::Value| {
            job("shop", &service(None, extra), false, &BTreeMap::new())
                .expect("ok")
                .expect("has build")
        };
        let err = check_builder(
            Builder::Docker,
            &with(serde_json::json!({"cache_to": ["r/c"]})),
        )
        .expect_err("docker build exports no cache");
        assert!(
            err.contains("`build.cache_to` cannot be honoured by docker build"),
            "{err}"
        );
        let gha = with(serde_json::json!({"cache_from": ["type=gha"]}));
        let err = check_builder(Builder::Buildah, &gha).expect_err("buildx only");
        assert!(
            err.contains("`type=gha` is a docker buildx cache exporter"),
            "{err}"
        );
        assert!(check_builder(Builder::Buildx, &gha).is_ok());
        let err = check_builder(
            Builder::Buildah,
            &with(serde_json::json!({"provenance": "true"})),
        )
        .expect_err("attestations");
        assert!(err.contains("`build.provenance`"), "{err}");
        let err = check_builder(
            Builder::Buildah,
            &with(serde_json::json!({"additional_contexts": {"base": "service:base"}})),
        )
        .expect_err("service contexts");
        assert!(
            err.contains("`base` names another service's build"),
            "{err}"
        );
        let err = job(
            "shop",
            &service(None, serde_json::json!({"secrets": ["missing"]})),
            false,
            &BTreeMap::new(),
        )
        .expect_err("undefined secret");
        assert!(err.contains("`missing`"), "{err}");
    }

    #[test]
    fn hosts_architectures_are_the_inventorys_else_what_they_report() {
        let mut fleet = crate::inventory::Fleet::default();
        for (name, arch) in [
            ("declared", Some("aarch64")),
            ("reports", None),
            ("silent", None),
        ] {
            let mut h = crate::inventory::Host::new(name, "10.0.0.1");
            h.arch = arch.map(str::to_string);
            fleet.hosts.push(h);
        }
        let facts: crate::plan::Facts = [("declared", "x86_64"), ("reports", "arm64")]
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
        let hosts = declared_hosts_with_facts(&fleet, Some(&facts));
        let seen: Vec<(Option<&str>, bool)> = hosts
            .iter()
            .map(|h| (h.arch.as_deref(), h.reported))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("aarch64"), false),
                (Some("aarch64"), true),
                (None, false)
            ]
        );
        // The one that reports arm64, with no emulator here: named with where that came from.
        let can = platform::Capability {
            arches: ["amd64".to_string()].into(),
            source: "test".into(),
        };
        let err = platform::choose(
            "web",
            &[],
            None,
            &hosts[1..2],
            &Platform::native(),
            &can,
            "buildah",
        )
        .expect_err("refused");
        assert!(
            err.contains("host `reports` is aarch64 (it reports so)"),
            "{err}"
        );
    }

    #[test]
    fn hosts_the_constraints_keep_the_service_off_need_no_image() {
        let host = |name: &str, arch: Option<&str>| DeclaredHost {
            name: name.into(),
            arch: arch.map(str::to_string),
            reported: false,
            labels: [("zone".to_string(), name.to_string())].into(),
        };
        let with = |constraints: &[&str]| {
            let mut s = service(None, serde_json::json!({}));
            let mut deploy = crate::compose::model::Deploy::default();
            deploy.placement.constraints = constraints.iter().map(|c| c.to_string()).collect();
            s.deploy = Some(deploy);
            let mut j = job("shop", &s, false, &BTreeMap::new())
                .expect("ok")
                .expect("has build");
            j.hosts = vec![host("pi", Some("aarch64")), host("x86", Some("x86_64"))];
            j
        };
        let both = platform::Capability {
            arches: ["amd64".to_string(), "arm64".to_string()].into(),
            source: "test".into(),
        };
        let arches = |j: &Job, c: &platform::Capability| {
            platforms_for(j, c, "buildah")
                .map(|ps| ps.into_iter().map(|p| p.arch).collect::<Vec<_>>())
        };
        assert_eq!(arches(&with(&[]), &both).expect("both").len(), 2);
        assert_eq!(
            arches(&with(&["node.platform.arch == amd64"]), &both),
            Ok(vec!["amd64".to_string()]),
            "no emulated build for a host the service never runs on"
        );
        assert_eq!(
            arches(&with(&["node.labels.zone != x86"]), &both),
            Ok(vec!["arm64".to_string()])
        );
        let amd_only = platform::Capability {
            arches: ["amd64".to_string()].into(),
            source: "test".into(),
        };
        let err = arches(&with(&["node.hostname == pi"]), &amd_only).expect_err("pi only");
        assert!(err.contains("host `pi` is aarch64"), "{err}");
    }
}
