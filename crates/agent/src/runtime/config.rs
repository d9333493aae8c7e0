//! What the runtime runs: a [`ContainerConfig`] checked and merged from the protocol's
//! `ContainerSpec` and the image's config, before any side effect.
//!
//! Merging follows Docker exactly: a compose `entrypoint` replaces the image's entrypoint *and*
//! resets the image's cmd; a compose `command` replaces the cmd; compose `environment` overrides the
//! image's env by key; `user` and `working_dir` override the image's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::caps;
use super::error::{Error, Result};
use crate::proto::{ContainerSpec, Mount, ResourceLimits};

/// The part of an image's config the runtime needs (OCI image config `config` object), plus the
/// unpacked layer directories, **bottom layer first** (the manifest's order).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    pub layers: Vec<PathBuf>,
}

/// The pod's namespaces a container joins: files held by bind mounts (see `pod`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    pub net: PathBuf,
    pub uts: PathBuf,
    pub ipc: PathBuf,
}

/// A mount as the runtime performs it: sources resolved to host paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuntimeMount {
    /// A bind of a host file or directory (named volumes are directories under the state dir).
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

impl RuntimeMount {
    pub fn target(&self) -> &str {
        match self {
            RuntimeMount::Bind { target, .. } | RuntimeMount::Tmpfs { target, .. } => target,
        }
    }
}

/// One resource limit (`setrlimit`), from compose `ulimits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Compose/Docker name: `nofile`, `nproc`, `core`, ...
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Everything needed to create, start and exec into one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub project: String,
    pub pod: String,
    /// The container's name inside the pod (the service name).
    pub name: String,
    /// The container's directory: `rootfs/` (mount point), `upper/`, `work/`, `config.json`.
    pub dir: PathBuf,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    pub namespaces: PodNamespaces,
    /// The pod's hostname (for `HOSTNAME`); the pod's uts namespace carries it.
    pub hostname: String,
    /// The process: entrypoint ++ cmd, merged.
    pub args: Vec<String>,
    /// `KEY=VALUE`, merged; `PATH` and `HOSTNAME` are filled in like Docker when absent.
    pub env: Vec<String>,
    /// `uid`, `uid:gid`, `name` or `name:group`; looked up in the rootfs's `/etc/passwd`.
    pub user: Option<String>,
    pub cwd: String,
    pub read_only: bool,
    pub privileged: bool,
    /// Capability mask (bounding, and effective/permitted for root).
    pub capabilities: u64,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// Namespaced sysctls only (checked).
    pub sysctls: BTreeMap<String, String>,
    pub rlimits: Vec<Rlimit>,
    pub mounts: Vec<RuntimeMount>,
    pub resources: ResourceLimits,
}

/// Docker's default `PATH` when neither the image nor compose sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a container's things are: chosen by the caller (the daemon's state layout).
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    pub project: &'a str,
    pub pod: &'a str,
    pub hostname: &'a str,
    pub namespaces: PodNamespaces,
    /// The container's directory (created by `Runtime::create`).
    pub dir: PathBuf,
    /// Named volumes live at `volumes_dir/<name>`.
    pub volumes_dir: &'a Path,
}

impl ContainerConfig {
    /// Checks and merges a compose container spec over its image's config. Pure: no I/O.
    pub fn build(spec: &ContainerSpec, image: &ImageConfig, at: Placement<'_>) -> Result<Self> {
        let service = &spec.service;
        let in_service = |e: Error| e.context(format!("service {service:?}"));

        // Entrypoint/cmd: Docker's rule (a compose entrypoint resets the image's cmd).
        let (entrypoint, cmd) = match &spec.entrypoint {
            Some(ep) => (ep.clone(), spec.command.clone().unwrap_or_default()),
            None => (
                image.entrypoint.clone().unwrap_or_default(),
                spec.command
                    .clone()
                    .or_else(|| image.cmd.clone())
                    .unwrap_or_default(),
            ),
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(in_service(Error::user(
                "no command specified: the image has no entrypoint or cmd; set `command` or `entrypoint`",
            )));
        }

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for kv in &image.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if env.insert(k.to_string(), v.to_string()).is_none() {
                order.push(k.to_string());
            }
        }
        for (k, v) in &spec.env {
            if env.insert(k.clone(), v.clone()).is_none() {
                order.push(k.clone());
            }
        }
        if !env.contains_key("PATH") {
            env.insert("PATH".into(), DEFAULT_PATH.into());
            order.insert(0, "PATH".into());
        }
        if !env.contains_key("HOSTNAME") {
            env.insert("HOSTNAME".into(), at.hostname.into());
            order.insert(1.min(order.len()), "HOSTNAME".into());
        }
        let env = order
            .iter()
            .map(|k| format!("{k}={}", env.get(k).map(String::as_str).unwrap_or("")))
            .collect();

        let cwd = spec
            .working_dir
            .clone()
            .or_else(|| image.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        if !cwd.starts_with('/') {
            return Err(in_service(Error::user(format!(
                "working_dir {cwd:?} is not an absolute path"
            ))));
        }

        let capabilities = if spec.privileged {
            (1u64 << caps::NAMES.len()) - 1
        } else {
            caps::effective_set(&spec.cap_add, &spec.cap_drop).map_err(in_service)?
        };

        for key in spec.sysctls.keys() {
            if !sysctl_is_namespaced(key) {
                return Err(in_service(Error::user(format!(
                    "sysctl {key:?} is not namespaced: only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set per container"
                ))));
            }
        }

        let mut rlimits = Vec::new();
        for (name, (soft, hard)) in &spec.ulimits {
            if rlimit_resource(name).is_none() {
                return Err(in_service(Error::user(format!("unknown ulimit {name:?}"))));
            }
            let to_u64 = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
            let (soft, hard) = (to_u64(*soft), to_u64(*hard));
            if soft > hard {
                return Err(in_service(Error::user(format!(
                    "ulimit {name}: soft limit {soft} is above hard limit {hard}"
                ))));
            }
            rlimits.push(Rlimit {
                name: name.clone(),
                soft,
                hard,
            });
        }

        let mut mounts = Vec::new();
        for m in &spec.mounts {
            let rm = match m {
                Mount::Volume {
                    name,
                    target,
                    read_only,
                } => {
                    if name.is_empty() || name.contains('/') || name.starts_with('.') {
                        return Err(in_service(Error::user(format!(
                            "volume name {name:?} is not a plain name"
                        ))));
                    }
                    RuntimeMount::Bind {
                        source: at.volumes_dir.join(name),
                        target: target.clone(),
                        read_only: *read_only,
                    }
                }
                Mount::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    if !source.starts_with('/') {
                        return Err(in_service(Error::user(format!(
                            "bind mount source {source:?} must be an absolute host path"
                        ))));
                    }
                    RuntimeMount::Bind {
                        source: PathBuf::from(source),
                        target: target.clone(),
                        read_only: *read_only,
                    }
                }
                Mount::Tmpfs { target, size } => RuntimeMount::Tmpfs {
                    target: target.clone(),
                    size: *size,
                },
            };
            let t = rm.target();
            if !t.starts_with('/') || t == "/" {
                return Err(in_service(Error::user(format!(
                    "mount target {t:?} must be an absolute path other than /"
                ))));
            }
            mounts.push(rm);
        }

        if let Some(cpus) = spec.resources.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                return Err(in_service(Error::user(format!(
                    "cpus must be a positive number, not {cpus}"
                ))));
            }
        }

        Ok(ContainerConfig {
            project: at.project.into(),
            pod: at.pod.into(),
            name: service.clone(),
            dir: at.dir,
            layers: image.layers.clone(),
            namespaces: at.namespaces,
            hostname: at.hostname.into(),
            args,
            env,
            user: spec
                .user
                .clone()
                .or_else(|| image.user.clone())
                .filter(|u| !u.is_empty()),
            cwd,
            read_only: spec.read_only,
            privileged: spec.privileged,
            capabilities,
            no_new_privs: !spec.privileged,
            seccomp: !spec.privileged,
            sysctls: spec.sysctls.clone(),
            rlimits,
            mounts,
            resources: spec.resources.clone(),
        })
    }

    /// The container's cgroup, relative to the hierarchy's root.
    pub fn cgroup_path(&self) -> String {
        format!("compose-fleet/{}/{}/{}", self.project, self.pod, self.name)
    }
}

/// Sysctls that belong to a namespace the container (or its pod) owns, as Docker allows them.
pub fn sysctl_is_namespaced(key: &str) -> bool {
    key.starts_with("net.")
        || key.starts_with("fs.mqueue.")
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
}

/// The `setrlimit` resource for a compose ulimit name.
pub fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "as" => R::RLIMIT_AS,
        "core" => R::RLIMIT_CORE,
        "cpu" => R::RLIMIT_CPU,
        "data" => R::RLIMIT_DATA,
        "fsize" => R::RLIMIT_FSIZE,
        "locks" => R::RLIMIT_LOCKS,
        "memlock" => R::RLIMIT_MEMLOCK,
        "msgqueue" => R::RLIMIT_MSGQUEUE,
        "nice" => R::RLIMIT_NICE,
        "nofile" => R::RLIMIT_NOFILE,
        "nproc" => R::RLIMIT_NPROC,
        "rss" => R::RLIMIT_RSS,
        "rtprio" => R::RLIMIT_RTPRIO,
        "rttime" => R::RLIMIT_RTTIME,
        "sigpending" => R::RLIMIT_SIGPENDING,
        "stack" => R::RLIMIT_STACK,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement<'static> {
        Placement {
            project: "p",
            pod: "web-1",
            hostname: "web-1",
            namespaces: PodNamespaces {
                net: "/s/net".into(),
                uts: "/s/uts".into(),
                ipc: "/s/ipc".into(),
            },
            dir: "/s/c".into(),
            volumes_dir: Path::new("/s/volumes"),
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            cmd: Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]),
            env: vec!["PATH=/opt/bin:/bin".into(), "A=image".into()],
            user: Some("101".into()),
            working_dir: Some("/srv".into()),
            layers: vec!["/l/0".into(), "/l/1".into()],
        }
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            service: "web".into(),
            replica: 1,
            image: "nginx".into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_entrypoint_and_cmd_are_used_when_compose_sets_neither() {
        let c = ContainerConfig::build(&spec(), &image(), placement()).unwrap();
        assert_eq!(
            c.args,
            ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
        assert_eq!(c.user.as_deref(), Some("101"));
        assert_eq!(c.cwd, "/srv");
        assert_eq!(c.env, ["PATH=/opt/bin:/bin", "HOSTNAME=web-1", "A=image"]);
        assert_eq!(c.capabilities, 0xa80425fb);
        assert!(c.seccomp && c.no_new_privs);
    }

    #[test]
    fn compose_command_replaces_only_the_cmd() {
        let s = ContainerSpec {
            command: Some(vec!["sh".into()]),
            ..spec()
        };
        let c = ContainerConfig::build(&s, &image(), placement()).unwrap();
        assert_eq!(c.args, ["/docker-entrypoint.sh", "sh"]);
    }

    #[test]
    fn compose_entrypoint_resets_the_image_cmd() {
        let s = ContainerSpec {
            entrypoint: Some(vec!["/bin/true".into()]),
            ..spec()
        };
        let c = ContainerConfig::build(&s, &image(), placement()).unwrap();
        assert_eq!(c.args, ["/bin/true"]);
        let s = ContainerSpec {
            entrypoint: Some(vec![]),
            command: Some(vec!["echo".into(), "hi".into()]),
            ..spec()
        };
        let c = ContainerConfig::build(&s, &image(), placement()).unwrap();
        assert_eq!(c.args, ["echo", "hi"]);
    }

    #[test]
    fn compose_environment_overrides_image_env_by_key() {
        let mut s = spec();
        s.env.insert("A".into(), "compose".into());
        s.env.insert("B".into(), "new".into());
        let c = ContainerConfig::build(&s, &image(), placement()).unwrap();
        assert_eq!(
            c.env,
            ["PATH=/opt/bin:/bin", "HOSTNAME=web-1", "A=compose", "B=new"]
        );
        let bare = ImageConfig {
            env: vec![],
            ..image()
        };
        let c = ContainerConfig::build(&spec(), &bare, placement()).unwrap();
        assert_eq!(c.env[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn no_command_at_all_is_a_user_error_naming_the_service() {
        let bare = ImageConfig {
            entrypoint: None,
            cmd: None,
            ..image()
        };
        let err = ContainerConfig::build(&spec(), &bare, placement()).unwrap_err();
        assert!(err.user);
        assert_eq!(err.message, "service \"web\"");
    }

    #[test]
    fn non_namespaced_sysctl_and_bad_ulimit_are_rejected() {
        let mut s = spec();
        s.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(ContainerConfig::build(&s, &image(), placement()).is_ok());
        s.sysctls.insert("vm.swappiness".into(), "1".into());
        let err = ContainerConfig::build(&s, &image(), placement()).unwrap_err();
        assert!(err.causes[0].contains("vm.swappiness"), "{err}");
        let mut s = spec();
        s.ulimits.insert("nofile".into(), (2048, 1024));
        assert!(ContainerConfig::build(&s, &image(), placement()).is_err());
    }

    #[test]
    fn volumes_resolve_under_the_volumes_dir_and_names_cannot_escape() {
        let mut s = spec();
        s.mounts.push(Mount::Volume {
            name: "data".into(),
            target: "/data".into(),
            read_only: false,
        });
        let c = ContainerConfig::build(&s, &image(), placement()).unwrap();
        assert_eq!(
            c.mounts[0],
            RuntimeMount::Bind {
                source: "/s/volumes/data".into(),
                target: "/data".into(),
                read_only: false
            }
        );
        s.mounts[0] = Mount::Volume {
            name: "../etc".into(),
            target: "/data".into(),
            read_only: false,
        };
        assert!(ContainerConfig::build(&s, &image(), placement()).is_err());
    }

    #[test]
    fn privileged_gets_every_capability_and_no_seccomp() {
        let s = ContainerSpec {
            privileged: true,
            ..spec()
        };
        let c = ContainerConfig::build(&s, &image(), placement()).unwrap();
        assert_eq!(c.capabilities.count_ones() as usize, caps::NAMES.len());
        assert!(!c.seccomp && !c.no_new_privs);
    }
}
