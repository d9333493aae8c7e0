//! Shared test support for tests that need root and the lab fleet.
//!
//! ```ignore
//! use crate::support::{self, Lab};
//!
//! #[test]
//! fn something_on_the_lab() {
//!     // Prints `skipped: … needs root (…)` and returns None when not root.
//!     let Some(lab) = Lab::up("something_on_the_lab", 3) else { return };
//!     let out = lab.ssh("lab-1", "hostname");           // system ssh, strict host keys
//!     let hosts = lab.cli().arg("hosts").output();       // compose-fleet -i DIR/inventory.yaml
//!     lab.faults().kill_sshd("lab-2").unwrap();          // fault injection: see compose_fleet::lab::Lab
//! }   // dropping `lab` runs `lab down`, then releases the lock
//! ```
//!
//! - [`is_root`]: the root check with the printed skip reason.
//! - [`lab_lock`]: the exclusive `flock` on [`LOCK_FILE`] that every lab test holds for its whole
//!   duration (the lab's addresses and names are fixed, so only one lab can exist at a time).
//! - [`Lab`]: a lab fleet in a temporary directory, up for the fixture's lifetime.

#![allow(dead_code)] // each test module uses a different part

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::fcntl::{Flock, FlockArg};

/// Lab tests hold an exclusive lock on this file for their whole duration.
pub const LOCK_FILE: &str = "/run/compose-fleet-lab.lock";

/// The fixture's lab directories are temporary directories named `cf-lab-…`.
const FIXTURE_PREFIX: &str = "cf-lab-";

/// The built CLI.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_compose-fleet"))
}

/// Whether we run as root; when not, prints `skipped: TEST needs root (WHY)` to stderr.
pub fn is_root(test: &str, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: {test} needs root ({why})");
        false
    }
}

/// The exclusive lab lock; released when dropped.
pub struct LabLock(#[allow(dead_code)] Flock<File>);

/// Blocks until this test holds the exclusive lab lock (tests of other runs and threads wait).
pub fn lab_lock() -> LabLock {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("cannot open {LOCK_FILE}: {e}"));
    match Flock::lock(file, FlockArg::LockExclusive) {
        Ok(lock) => LabLock(lock),
        Err((_, e)) => panic!("cannot lock {LOCK_FILE}: {e}"),
    }
}

/// A lab fleet brought up by `compose-fleet lab up --hosts N --dir <tempdir>` with the built
/// binary; `lab down` runs when it is dropped (also when the test panics). Holds the lab lock.
pub struct Lab {
    /// Library handle on the same directory, for fault injection.
    lab: compose_fleet::lab::Lab,
    hosts: usize,
    // Dropped after `Drop::drop` ran `lab down`: the directory, then the lock.
    _dir: tempfile::TempDir,
    _lock: LabLock,
}

impl Lab {
    /// Brings up a lab of `hosts` hosts (`lab-1..lab-N` at 10.250.0.11…). Returns `None`, having
    /// printed why, when not root. Panics with `lab up`'s output when it fails.
    pub fn up(test: &str, hosts: usize) -> Option<Lab> {
        if !is_root(
            test,
            "the lab creates network namespaces, a bridge and mounts",
        ) {
            return None;
        }
        let lock = lab_lock();
        clean_stale_lab();
        let dir = tempfile::Builder::new()
            .prefix(FIXTURE_PREFIX)
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let lab = Lab {
            lab: compose_fleet::lab::Lab::at(dir.path()),
            hosts,
            _dir: dir,
            _lock: lock,
        };
        let out = lab.run_lab(&["up", "--hosts", &hosts.to_string()]);
        assert!(out.status.success(), "lab up failed: {}", describe(&out));
        Some(lab)
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        self.lab.dir()
    }
    /// `DIR/inventory.yaml`.
    pub fn inventory(&self) -> PathBuf {
        self.lab.inventory()
    }
    /// The private key authorized for root on every host.
    pub fn identity(&self) -> PathBuf {
        self.lab.identity()
    }
    /// `known_hosts` with every host's key.
    pub fn known_hosts(&self) -> PathBuf {
        self.lab.known_hosts()
    }
    /// Host names, `lab-1..lab-N`.
    pub fn host_names(&self) -> Vec<String> {
        (1..=self.hosts).map(|i| format!("lab-{i}")).collect()
    }
    /// A host's address: `lab-N` is 10.250.0.(10+N).
    pub fn address(&self, host: &str) -> String {
        let index: usize = host
            .strip_prefix("lab-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a lab host name: {host}"));
        format!("10.250.0.{}", 10 + index)
    }

    /// Fault injection and `exec` in a host: `cut_off`/`reconnect`, `kill_sshd`/`start_sshd`,
    /// `freeze`/`thaw`, `change_host_key`, `exec` (see `compose_fleet::lab::Lab`).
    pub fn faults(&self) -> &compose_fleet::lab::Lab {
        &self.lab
    }

    /// Runs `command` on a host with the system `ssh`: the lab key, strict host-key checking
    /// against the lab's `known_hosts`, batch mode, a 5 s connect timeout.
    pub fn ssh(&self, host: &str, command: &str) -> Output {
        Command::new("ssh")
            .arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(self.identity())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg(format!("root@{}", self.address(host)))
            .arg(command)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh: {e}"))
    }

    /// `compose-fleet -i DIR/inventory.yaml` (add the command and its arguments).
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("-i").arg(self.inventory());
        cmd
    }

    /// Runs `compose-fleet lab ARGS… --dir DIR`.
    pub fn run_lab(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("lab")
            .args(args)
            .arg("--dir")
            .arg(self.dir())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin().display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.run_lab(&["down"]);
        if !out.status.success() {
            eprintln!("lab down failed: {}", describe(&out));
        }
    }
}

/// A lab left up by a crashed run of this fixture (a temporary directory named `cf-lab-…`) is torn
/// down; any other lab (someone's demo or benchmark) makes the test fail with `lab up`'s message.
fn clean_stale_lab() {
    let Ok(active) = std::fs::read_to_string(compose_fleet::lab::ACTIVE_MARKER) else {
        return;
    };
    let active = PathBuf::from(active.trim());
    let ours = active.parent() == Some(std::env::temp_dir().as_path())
        && active
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(FIXTURE_PREFIX));
    if ours {
        eprintln!(
            "note: tearing down a stale test lab at {}",
            active.display()
        );
        let _ = Command::new(bin())
            .args(["lab", "down", "--dir"])
            .arg(&active)
            .output();
    }
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
