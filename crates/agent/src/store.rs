//! Durable state on the host: every file the agent keeps is written atomically (temp file in the
//! same directory, fsync, rename, fsync of the directory), so a crash or power loss leaves either
//! the old content or the new one, never a torn file. Other agent modules reuse [`write_atomic`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the agent keeps its state and its runtime files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Persistent state: `/var/lib/compose-fleet` (binaries, pods, volumes, logs).
    pub state: PathBuf,
    /// Runtime files: `/run/compose-fleet` (the daemon's socket, lock and pid file).
    pub run: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            state: PathBuf::from("/var/lib/compose-fleet"),
            run: PathBuf::from("/run/compose-fleet"),
        }
    }
}

impl Paths {
    /// The default paths, overridden by `COMPOSE_FLEET_STATE_DIR` / `COMPOSE_FLEET_RUN_DIR` (tests
    /// run a daemon without touching the host's real directories).
    pub fn from_env() -> Self {
        let mut paths = Paths::default();
        if let Some(dir) = std::env::var_os("COMPOSE_FLEET_STATE_DIR") {
            paths.state = PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("COMPOSE_FLEET_RUN_DIR") {
            paths.run = PathBuf::from(dir);
        }
        paths
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("agent.sock")
    }

    pub fn lock(&self) -> PathBuf {
        self.run.join("agent.lock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run.join("agent.pid")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state.join("log")
    }
}

/// Replaces `path` with `contents` atomically, with permission `mode` (e.g. `0o600`, `0o400` for
/// secrets). The parent directory must exist.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // Unique per process and call, so concurrent writers never share a temp file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{n}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        // `mode` above is filtered by the umask; set it exactly.
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_content_and_sets_mode() {
        let dir = std::env::temp_dir().join(format!("cf-store-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.json");
        write_atomic(&path, b"old", 0o644).expect("first write");
        write_atomic(&path, b"new", 0o400).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        // No temp files left behind.
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
