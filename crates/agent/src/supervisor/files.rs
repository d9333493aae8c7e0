//! Named volumes, secrets and configs on the host side: the directories and files a pod's
//! containers get mounted, resolved into [`ResolvedMount`]s for the runtime.
//!
//! - Named volumes are directories under `projects/<project>/volumes/`, created on first use and
//!   kept across pod replacement; only `Remove` with `volumes` deletes them.
//! - Secrets go to a tmpfs mounted per pod on `pods/<pod>/secrets` (so never to disk), mode 0400.
//!   Mounting needs root; without it the pod fails with an error saying so. Secret contents are
//!   never logged and never written into `desired.json` or `launch.json`.
//! - Configs are plain files under `pods/<pod>/configs/` with the mode the compose file asks for.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::seam::ResolvedMount;
use super::state::StateRoot;
use crate::proto::{ContainerSpec, FileDelivery, Mount, PodSpec};

pub const SECRETS_DIR: &str = "secrets";
pub const CONFIGS_DIR: &str = "configs";

/// Whether `name` is safe as one path component (project, pod, service, volume names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Resolves a container's compose mounts, creating named volume directories on the way.
pub fn resolve_mounts(
    state: &StateRoot,
    project: &str,
    spec: &ContainerSpec,
) -> io::Result<Vec<ResolvedMount>> {
    let mut out = Vec::new();
    for m in &spec.mounts {
        out.push(match m {
            Mount::Volume {
                name,
                target,
                read_only,
            } => {
                if !valid_name(name) {
                    return Err(io::Error::other(format!(
                        "volume name {name:?} is not a valid name (letters, digits, '_', '-', '.')"
                    )));
                }
                let dir = state.volume(project, name);
                fs::create_dir_all(&dir).map_err(|e| {
                    io::Error::new(e.kind(), format!("creating volume {}: {e}", dir.display()))
                })?;
                ResolvedMount::Bind {
                    source: dir,
                    target: target.clone(),
                    read_only: *read_only,
                }
            }
            Mount::Bind {
                source,
                target,
                read_only,
            } => ResolvedMount::Bind {
                source: PathBuf::from(source),
                target: target.clone(),
                read_only: *read_only,
            },
            Mount::Tmpfs { target, size } => ResolvedMount::Tmpfs {
                target: target.clone(),
                size: *size,
            },
        });
    }
    Ok(out)
}

/// Mounts the pod's secrets tmpfs when any container of the pod has a secret.
pub fn mount_secrets_tmpfs(pod_dir: &Path, pod: &PodSpec) -> io::Result<()> {
    let total: usize = pod
        .containers
        .iter()
        .flat_map(|c| &c.files)
        .filter(|f| f.secret)
        .map(|f| f.content_b64.len())
        .sum();
    if !pod
        .containers
        .iter()
        .flat_map(|c| &c.files)
        .any(|f| f.secret)
    {
        return Ok(());
    }
    let dir = pod_dir.join(SECRETS_DIR);
    fs::create_dir_all(&dir)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(io::Error::other(format!(
            "pod {}: secrets are kept on a tmpfs, and mounting one needs root; run the agent as root",
            pod.name
        )));
    }
    // Room for every secret plus inode overhead; a tmpfs only uses what is written.
    let size = (total as u64 * 2).max(1 << 20);
    let flags = nix::mount::MsFlags::MS_NOSUID
        | nix::mount::MsFlags::MS_NODEV
        | nix::mount::MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some("compose-fleet-secrets"),
        &dir,
        Some("tmpfs"),
        flags,
        Some(format!("mode=0700,size={size}").as_str()),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "mounting the secrets tmpfs on {}: {e}",
            dir.display()
        ))
    })
}

/// Whether the pod's secrets tmpfs is mounted (its directory is on another device than the pod
/// directory).
pub fn secrets_mounted(pod_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        fs::metadata(pod_dir),
        fs::metadata(pod_dir.join(SECRETS_DIR)),
    ) {
        (Ok(pod), Ok(secrets)) => pod.dev() != secrets.dev(),
        _ => false,
    }
}

/// Unmounts the pod's secrets tmpfs if it is mounted (a no-op otherwise).
pub fn unmount_secrets_tmpfs(pod_dir: &Path) {
    let dir = pod_dir.join(SECRETS_DIR);
    if dir.exists() {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes a container's secret and config files and returns their mounts. Secrets land on the
/// pod's tmpfs (mounted by [`mount_secrets_tmpfs`]) with mode 0400; configs with their mode.
pub fn write_files(
    pod_dir: &Path,
    container: &str,
    files: &[FileDelivery],
) -> io::Result<Vec<ResolvedMount>> {
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let base = Path::new(&f.target)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| valid_name(n))
            .unwrap_or("file");
        let kind = if f.secret { SECRETS_DIR } else { CONFIGS_DIR };
        let dir = pod_dir.join(kind).join(container);
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{i}-{base}"));
        let content = base64::engine::general_purpose::STANDARD
            .decode(f.content_b64.as_bytes())
            .map_err(|e| {
                // Never the content itself: it may be a secret.
                io::Error::other(format!(
                    "the content of {} is not valid base64: {e}",
                    f.target
                ))
            })?;
        let mode = if f.secret { 0o400 } else { f.mode & 0o7777 };
        let _ = fs::remove_file(&path);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(&content)?;
        drop(file);
        if f.uid.is_some() || f.gid.is_some() {
            nix::unistd::chown(
                &path,
                f.uid.map(nix::unistd::Uid::from_raw),
                f.gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(|e| io::Error::other(format!("chown of {}: {e}", f.target)))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        out.push(ResolvedMount::Bind {
            source: path,
            target: f.target.clone(),
            read_only: true,
        });
    }
    Ok(out)
}

/// The spec as it may be stored on disk: secret contents removed (configs keep theirs: they are
/// written to disk anyway).
pub fn strip_secrets(spec: &ContainerSpec) -> ContainerSpec {
    let mut spec = spec.clone();
    for f in &mut spec.files {
        if f.secret {
            f.content_b64.clear();
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_safe_components() {
        for ok in ["web-1", "db_data", "a.b", "X9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "../x", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn configs_get_their_mode_and_secrets_are_stripped_for_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = vec![FileDelivery {
            target: "/etc/app.conf".into(),
            content_b64: "aGVsbG8=".into(),
            mode: 0o640,
            secret: false,
            uid: None,
            gid: None,
        }];
        let mounts = write_files(dir.path(), "app-1", &files).expect("write");
        let [ResolvedMount::Bind { source, target, .. }] = mounts.as_slice() else {
            panic!("one bind mount expected, got {mounts:?}");
        };
        assert_eq!(target, "/etc/app.conf");
        assert_eq!(fs::read(source).expect("read"), b"hello");
        let mode = fs::metadata(source).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);

        let spec = ContainerSpec {
            files: vec![FileDelivery {
                secret: true,
                ..files[0].clone()
            }],
            ..ContainerSpec::default()
        };
        assert_eq!(strip_secrets(&spec).files[0].content_b64, "");
    }

    #[test]
    fn invalid_base64_error_does_not_echo_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = vec![FileDelivery {
            target: "/run/secrets/pw".into(),
            content_b64: "hunter2!!".into(),
            mode: 0o400,
            secret: true,
            uid: None,
            gid: None,
        }];
        let err = write_files(dir.path(), "app-1", &files).expect_err("invalid");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
