//! The agent's on-disk state: where every file lives, atomic writes, and tolerant reads.
//!
//! Layout under the state root (`/var/lib/compose-fleet` on a host, a temp dir in tests):
//!
//! ```text
//! projects/<project>/desired.json          the last Apply (secret contents stripped)
//! projects/<project>/observed.json         restart counts, health, last exits per container
//! projects/<project>/generations.json      pods running under their twin name, or two at once
//! projects/<project>/volumes/<name>/       named volumes (kept across pod replacement)
//! projects/<project>/pods/<pod>/configs/   config files
//! projects/<project>/pods/<pod>/secrets/   a tmpfs mount: secret files, 0400
//! projects/<project>/pods/<pod>/<svc>-<n>/ one container: launch.json, shim.json, exit.json, logs
//! (`<pod>` is the instance: the pod's name, or `<name>.b` for the generation beside it)
//! ```
//!
//! Invariant: the daemon never refuses to start because of its own state. A file that cannot be
//! read or parsed is moved aside to `<name>.corrupt-<unix seconds>` with a log line and treated as
//! absent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The default state root on a host.
pub const DEFAULT_ROOT: &str = "/var/lib/compose-fleet";

/// Paths of the agent's state; every path the supervisor touches is computed here.
#[derive(Debug, Clone)]
pub struct StateRoot {
    root: PathBuf,
}

impl StateRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn projects(&self) -> PathBuf {
        self.root.join("projects")
    }

    pub fn project(&self, project: &str) -> PathBuf {
        self.projects().join(project)
    }

    pub fn desired(&self, project: &str) -> PathBuf {
        self.project(project).join("desired.json")
    }

    /// Which instance of each pod is current, and which outgoing (see `generations`).
    pub fn generations(&self, project: &str) -> PathBuf {
        self.project(project).join("generations.json")
    }

    pub fn observed(&self, project: &str) -> PathBuf {
        self.project(project).join("observed.json")
    }

    pub fn volume(&self, project: &str, volume: &str) -> PathBuf {
        self.project(project).join("volumes").join(volume)
    }

    pub fn pod(&self, project: &str, pod: &str) -> PathBuf {
        self.project(project).join("pods").join(pod)
    }

    pub fn container(&self, project: &str, pod: &str, service: &str, replica: u32) -> PathBuf {
        self.pod(project, pod).join(format!("{service}-{replica}"))
    }

    /// Names of the projects that have a directory, sorted.
    pub fn project_names(&self) -> Vec<String> {
        list_dirs(&self.projects())
    }
}

/// Names of the subdirectories of `dir`, sorted; empty when `dir` is missing or unreadable.
pub fn list_dirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync of the
/// directory. A reader sees the old content or the new one, never a torn file, even after a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent directory", path.display())))?;
    fs::create_dir_all(dir)?;
    crate::store::write_atomic(path, bytes, mode)
}

/// Serializes `value` as pretty JSON and writes it atomically (mode 0600).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes, 0o600)
}

/// Reads a JSON file. Missing → `None`. Unreadable or unparsable → moved aside to
/// `*.corrupt-<ts>`, logged, and `None`: the daemon carries on with empty state.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            move_aside(path, &e.to_string());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            move_aside(path, &e.to_string());
            None
        }
    }
}

/// Moves a corrupt state file out of the way so the next write starts clean, keeping it for a
/// human to look at.
pub fn move_aside(path: &Path, why: &str) {
    let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), unix_secs()));
    match fs::rename(path, &aside) {
        Ok(()) => log(&format!(
            "state file {} is unreadable ({why}); moved it to {} and continued with empty state",
            path.display(),
            aside.display()
        )),
        Err(e) => log(&format!(
            "state file {} is unreadable ({why}) and could not be moved aside ({e}); ignoring it",
            path.display()
        )),
    }
}

/// One line on the daemon's stderr (journald or the daemon log file captures it).
pub fn log(msg: &str) {
    eprintln!("compose-fleet-agent: {msg}");
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/state.json");
        write_json(&path, &vec![1, 2, 3]).expect("write");
        write_json(&path, &vec![4]).expect("rewrite");
        assert_eq!(read_json::<Vec<i32>>(&path), Some(vec![4]));
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf8"))
            .collect();
        assert_eq!(names, vec!["state.json".to_string()]);
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_read_as_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("desired.json");
        fs::write(&path, b"{ torn").expect("write");
        assert_eq!(read_json::<Vec<i32>>(&path), None);
        assert!(!path.exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf8"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].starts_with("desired.json.corrupt-"), "{aside:?}");
    }

    #[test]
    fn missing_file_is_absent_without_side_effects() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_json::<Vec<i32>>(&dir.path().join("nope.json")), None);
        assert_eq!(fs::read_dir(dir.path()).expect("read_dir").count(), 0);
    }
}
