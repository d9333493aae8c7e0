//! What happens however the process ends: private temporary directories (an SSH key from
//! `COMPOSE_FLEET_SSH_KEY`, pinned host keys, control sockets) are removed at exit, on SIGINT and
//! SIGTERM, and when `--timeout` expires; and the activities still running, which a timeout names.
//!
//! A process-wide registry, because a signal or a deadline ends the process from outside the
//! code that made the directory: `Drop` does not run then. [`install`] starts one thread that
//! waits for SIGINT/SIGTERM (through tokio's signal registry, so `up`'s own graceful interrupt
//! still sees SIGINT) and, with `--timeout`, a watchdog.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Directories to remove at exit, by id.
static DIRS: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
/// What is running now, by id, for the `--timeout` message.
static ACTIVITIES: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Set while some code handles SIGINT itself (`up`'s flow stops new work and waits for what is
/// in flight): the first SIGINT is left to it, a second one ends the process.
static GRACEFUL_INTERRUPT: AtomicBool = AtomicBool::new(false);
/// Set once the code that holds a [`GracefulInterrupt`] guard has acted on a SIGINT. Its listener
/// and the signal thread hear the same SIGINT independently: the holder may act on it and drop
/// its guard before the signal thread looks (found as `logs -f` ending with 130 instead of 0 under
/// load), so the signal thread asks this too, not only whether a guard is held now.
static INTERRUPT_HANDLED: AtomicBool = AtomicBool::new(false);
/// Set once a signal or the timeout ends the process: the main thread must not exit with
/// another code while the files are being removed (see [`exit_code`]).
static ENDING: AtomicBool = AtomicBool::new(false);
/// When `--timeout` expires, if given.
static DEADLINE: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// A private (0700) temporary directory, removed when dropped and, if the process ends first,
/// at exit, on SIGINT/SIGTERM or on `--timeout`.
#[derive(Debug)]
pub struct PrivateDir {
    id: u64,
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `$TMPDIR/PREFIX-PID-NANOS` with mode 0700. Keep `prefix` short: control socket
    /// paths inside it are limited to ~108 bytes.
    pub fn create(prefix: &str) -> std::io::Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}{id:x}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        lock(&DIRS).insert(id, path.clone());
        Ok(PrivateDir { id, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` inside the directory with mode 0600 (created with that mode, so the content
    /// is never readable by others, not even for a moment).
    pub fn write(&self, name: &str, content: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(content)?;
        Ok(path)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        lock(&DIRS).remove(&self.id);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl AsRef<Path> for PrivateDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// Ends the process from the signal or timeout thread: no other thread may exit first with
/// another code (a command whose files just vanished would fail, with exit 1), then the files
/// go, then the process.
fn end(code: i32) -> ! {
    ENDING.store(true, Ordering::SeqCst);
    cleanup();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The main thread's way out: removes the private files and returns `code`, unless a signal or
/// the timeout is ending the process, which then ends it with its own code.
pub fn exit_code(code: std::process::ExitCode) -> std::process::ExitCode {
    if ENDING.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    cleanup();
    code
}

/// Removes every private directory still registered. Called at the end of `main`, and before
/// the process exits on a signal or a timeout.
pub fn cleanup() {
    let dirs = std::mem::take(&mut *lock(&DIRS));
    for path in dirs.values() {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Something running, named in the `--timeout` message until the guard is dropped.
#[derive(Debug)]
pub struct Activity(u64);

impl Drop for Activity {
    fn drop(&mut self) {
        lock(&ACTIVITIES).remove(&self.0);
    }
}

/// Records `what` as running (e.g. "connecting to host `web-1`") until the guard is dropped.
pub fn activity(what: impl Into<String>) -> Activity {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock(&ACTIVITIES).insert(id, what.into());
    Activity(id)
}

/// What is running now, oldest first.
pub fn running() -> Vec<String> {
    lock(&ACTIVITIES).values().cloned().collect()
}

/// Marks that the caller handles SIGINT itself until the guard is dropped.
pub struct GracefulInterrupt(());

impl Drop for GracefulInterrupt {
    fn drop(&mut self) {
        GRACEFUL_INTERRUPT.store(false, Ordering::SeqCst);
    }
}

/// Said by the code that holds a [`GracefulInterrupt`] guard when its own listener heard SIGINT
/// and it acts on it (before it drops the guard).
pub fn interrupt_handled() {
    INTERRUPT_HANDLED.store(true, Ordering::SeqCst);
}

/// Whether the first SIGINT is the guard holder's: a guard is held now (its listener hears the
/// same signal), or the holder already said it acted on it.
fn first_interrupt_is_handled() -> bool {
    GRACEFUL_INTERRUPT.load(Ordering::SeqCst) || INTERRUPT_HANDLED.load(Ordering::SeqCst)
}

pub fn graceful_interrupt() -> GracefulInterrupt {
    GRACEFUL_INTERRUPT.store(true, Ordering::SeqCst);
    GracefulInterrupt(())
}

/// Starts the signal thread and, with a `timeout`, the watchdog that ends the command when it
/// expires (exit 1, naming `command` and what was still running).
pub fn install(command: &'static str, timeout: Option<Duration>) {
    // The handlers are in place before this returns: a SIGTERM right after the key file is
    // written must find them (found as a killed test run leaving its key behind).
    let (ready, listening) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_for_signals(ready));
    if spawned.is_ok() {
        let _ = listening.recv_timeout(Duration::from_secs(5));
    }
    if let Err(e) = spawned {
        crate::output::warning(&format!(
            "cannot watch for SIGINT/SIGTERM ({e}): temporary files may stay behind if the \
             command is killed"
        ));
    }
    if let Some(limit) = timeout {
        *lock(&DEADLINE) = Some(std::time::Instant::now() + limit);
        let _ = std::thread::Builder::new()
            .name("timeout".into())
            .spawn(move || {
                std::thread::sleep(limit);
                let running = running();
                let what = if running.is_empty() {
                    String::new()
                } else {
                    format!(" while still {}", running.join("; "))
                };
                ENDING.store(true, Ordering::SeqCst);
                crate::output::error(&format!(
                    "`{command}` did not finish within --timeout {}{what}",
                    crate::human::format_duration(limit)
                ));
                end(1);
            });
    }
}

/// The time left before `--timeout` ends the command; `None` without one.
pub fn remaining() -> Option<Duration> {
    lock(&DEADLINE).map(|d| d.saturating_duration_since(std::time::Instant::now()))
}

fn wait_for_signals(ready: std::sync::mpsc::Sender<()>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let _ = ready.send(());
        let mut interrupts = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {
                    interrupts += 1;
                    // Only the first interrupt can be graceful: a second one always ends the
                    // process.
                    if interrupts == 1 && first_interrupt_is_handled() {
                        continue;
                    }
                    end(130);
                }
                _ = term.recv() => {
                    end(143);
                }
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_are_0700_files_0600_and_cleanup_removes_them() {
        let dir = PrivateDir::create("cf-test").expect("temp dir");
        let mode = std::fs::metadata(dir.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = dir.write("key", b"secret").expect("write");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = dir.path().to_path_buf();
        cleanup();
        assert!(!path.exists(), "cleanup removes registered directories");
        drop(dir);
        let other = PrivateDir::create("cf-test").expect("temp dir");
        let p = other.path().to_path_buf();
        drop(other);
        assert!(!p.exists(), "drop removes it");
    }

    #[test]
    fn activities_are_listed_until_dropped() {
        let a = activity("connecting to host `a-unique-name`");
        assert!(running().iter().any(|r| r.contains("a-unique-name")));
        drop(a);
        assert!(!running().iter().any(|r| r.contains("a-unique-name")));
    }
}
