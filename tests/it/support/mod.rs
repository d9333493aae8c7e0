//! Shared test support: what a test may skip (root, the shared corpus) and the lab fleet fixture.
//!
//! ```ignore
//! use crate::support::{self, Lab};
//!
//! #[test]
//! fn something_on_the_lab() {
//!     // Prints `skipped: … needs root (…)` and returns None when not root.
//!     let Some(lab) = Lab::up("something_on_the_lab", 3) else { return };
//!     let out = lab.ssh(&lab.host(1), "hostname");      // system ssh, strict host keys
//!     let hosts = lab.cli().arg("hosts").output();       // compose-fleet -i DIR/inventory.yaml
//!     lab.faults().kill_sshd(&lab.host(2)).unwrap();     // fault injection: see compose_fleet::lab::Lab
//! }   // dropping `lab` runs `lab down`
//! ```
//!
//! - [`is_root`] and [`shared`]: a test that cannot run here skips with a printed reason, unless
//!   `COMPOSE_FLEET_REQUIRE_ROOT=1` / `COMPOSE_FLEET_REQUIRE_SHARED=1` (CI) make that a failure.
//! - [`Lab`]: a lab fleet of its own name (`t-PID-N`) in a temporary directory, up for the
//!   fixture's lifetime. Labs of different names live side by side, so lab tests run
//!   concurrently, beside any lab the user has up.

#![allow(dead_code)] // each test module uses a different part

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// Set to 1, a test that needs root fails instead of skipping when not root.
pub const REQUIRE_ROOT: &str = "COMPOSE_FLEET_REQUIRE_ROOT";
/// Set to 1, a test that needs the shared corpus fails instead of skipping when it is missing.
pub const REQUIRE_SHARED: &str = "COMPOSE_FLEET_REQUIRE_SHARED";
/// Where the shared corpus is, when not `../shared` beside the repository.
pub const SHARED_DIR: &str = "COMPOSE_FLEET_SHARED";

/// Every lab test holds a shared lock on this file for its lab's lifetime. Labs of different
/// names coexist, so tests share it; a test that must see the machine without test labs (or a
/// checkout from before labs had names) takes it exclusively.
pub const LOCK_FILE: &str = "/run/compose-fleet-lab.lock";

/// The fixture's lab directories are temporary directories named `cf-lab-…`.
const FIXTURE_PREFIX: &str = "cf-lab-";

/// The built CLI.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_compose-fleet"))
}

/// A test cannot run here because of `reason`: prints `skipped: TEST: REASON` and returns, or,
/// when the variable `require` is `1`, fails the test. The line goes straight to stderr (not
/// through the test harness's capture) so that a skip is seen in every run.
pub fn skip(test: &str, require: &str, reason: &str) {
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and {require}=1 forbids skipping it");
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: {test}: {reason} (set {require}=1 to make this a failure)"
    );
}

/// Whether we run as root; when not, the test skips (see [`skip`]) with `why` it needs root.
pub fn is_root(test: &str, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, REQUIRE_ROOT, &format!("needs root ({why})"));
    false
}

/// The shared corpus (`compose-corpus/`, …): `$COMPOSE_FLEET_SHARED`, else `../shared` beside the
/// repository, else `../../shared` (a git worktree kept one level deeper, `wt/NAME`). `None`,
/// the test skipping (see [`skip`]), when it is not there.
pub fn shared(test: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = std::env::var_os(SHARED_DIR)
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join("../shared"), root.join("../../shared")])
        .collect();
    if let Some(found) = candidates
        .iter()
        .find(|d| d.join("compose-corpus").is_dir())
    {
        return Some(found.clone());
    }
    skip(
        test,
        REQUIRE_SHARED,
        &format!(
            "needs the shared corpus, not found: no compose-corpus/ in {}; clone `shared/` beside the repository or set {SHARED_DIR}",
            candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    None
}

/// A shared or exclusive hold of [`LOCK_FILE`]; released when dropped.
pub struct LabLock(#[allow(dead_code)] Flock<File>);

/// Blocks until this test holds [`LOCK_FILE`], shared (lab tests) or exclusive (a test that must
/// see no test lab come or go).
pub fn lab_lock(exclusive: bool) -> LabLock {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("cannot open {LOCK_FILE}: {e}"));
    let how = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    match Flock::lock(file, how) {
        Ok(lock) => LabLock(lock),
        Err((_, e)) => panic!("cannot lock {LOCK_FILE}: {e}"),
    }
}

/// A lab name of this test process: `t-PID-N`.
pub fn lab_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!(
        "t-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A lab fleet brought up by `compose-fleet lab up --name t-PID-N --hosts N --dir <tempdir>` with
/// the built binary; `lab down` runs when it is dropped (also when the test panics).
pub struct Lab {
    /// Library handle on the same lab, for fault injection.
    lab: compose_fleet::lab::Lab,
    // Dropped after `Drop::drop` ran `lab down`: the directory, then the lock.
    _dir: tempfile::TempDir,
    _lock: LabLock,
}

impl Lab {
    /// The lab's hosts as SSH targets (from its inventory) and the agent binary they run: what a
    /// test talking to the agents directly starts from.
    pub fn agents(
        &self,
    ) -> (
        Vec<compose_fleet::ssh::SshTarget>,
        compose_fleet::ssh::AgentBinary,
    ) {
        let fleet = compose_fleet::inventory::load(&self.inventory()).expect("lab inventory");
        let targets = compose_fleet::ssh::SshTarget::all(&fleet);
        let agent = compose_fleet::ssh::AgentBinary::locate(None).expect("the agent binary");
        (targets, agent)
    }

    /// Brings up a lab of `hosts` hosts (`NAME-1..NAME-N`). Returns `None`, having printed why,
    /// when not root. Panics with `lab up`'s output when it fails.
    pub fn up(test: &str, hosts: usize) -> Option<Lab> {
        Lab::up_on_sites(test, hosts, 1)
    }

    /// Like [`Lab::up`], with the hosts spread over `sites` L2 segments.
    pub fn up_on_sites(test: &str, hosts: usize, sites: usize) -> Option<Lab> {
        if !is_root(
            test,
            "the lab creates network namespaces, a bridge and mounts",
        ) {
            return None;
        }
        let lock = lab_lock(false);
        clean_stale_labs();
        let dir = tempfile::Builder::new()
            .prefix(FIXTURE_PREFIX)
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let name = lab_name();
        let lab = Lab {
            lab: compose_fleet::lab::Lab::new(&name, dir.path())
                .unwrap_or_else(|e| panic!("lab name {name}: {e}")),
            _dir: dir,
            _lock: lock,
        };
        let out = lab.run_lab(&[
            "up",
            "--hosts",
            &hosts.to_string(),
            "--sites",
            &sites.to_string(),
        ]);
        assert!(out.status.success(), "lab up failed: {}", describe(&out));
        Some(lab)
    }

    /// The lab's name (`t-PID-N`).
    pub fn name(&self) -> &str {
        self.lab.name()
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
    /// Host N's name (`NAME-N`, from 1).
    pub fn host(&self, index: usize) -> String {
        format!("{}-{index}", self.name())
    }
    /// Host names, `NAME-1..NAME-N`.
    pub fn host_names(&self) -> Vec<String> {
        self.lab.hosts().into_iter().map(|h| h.name).collect()
    }
    /// A host's address.
    pub fn address(&self, host: &str) -> String {
        self.lab
            .host(host)
            .unwrap_or_else(|e| panic!("{e}"))
            .address
    }
    /// The lab's registry, `10.250.K.1:5000`.
    pub fn registry(&self) -> String {
        self.lab.registry().expect("the lab is up")
    }
    /// The lab's shell image (busybox `sh`).
    pub fn shell_image(&self) -> String {
        compose_fleet::lab::images::shell_image(&self.registry())
    }
    /// The lab's HTTP server image (busybox `httpd` on port 80).
    pub fn httpd_image(&self) -> String {
        compose_fleet::lab::images::httpd_image(&self.registry())
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

    /// `compose-fleet lab SUBCOMMAND --name NAME --dir DIR` (add further arguments).
    pub fn lab_command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(["lab", subcommand, "--name", self.name(), "--dir"])
            .arg(self.dir());
        cmd
    }

    /// Runs `compose-fleet lab ARGS… --name NAME --dir DIR`.
    pub fn run_lab(&self, args: &[&str]) -> Output {
        self.lab_command(args[0])
            .args(&args[1..])
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

/// Labs of this fixture left up by a crashed test run (named `t-PID-N` after a process that is
/// gone) are torn down, once per run. Any other lab (someone's demo) is left alone.
fn clean_stale_labs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for record in compose_fleet::lab::index::list() {
            let pid = record
                .name
                .strip_prefix("t-")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<i32>().ok());
            let Some(pid) = pid else { continue };
            if pid as u32 == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            eprintln!(
                "note: tearing down the stale test lab {} at {}",
                record.name,
                record.dir.display()
            );
            let _ = Command::new(bin())
                .args(["lab", "down", "--name", &record.name])
                .output();
        }
    });
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

/// How long one agent reply may take in a lab test before it gives up (not a timing assertion).
pub const AGENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

/// One agent request on a fresh SSH connection (so that `agent rpc` starts a daemon when none
/// runs): all its frames, the last one final.
pub async fn rpc(
    target: &compose_fleet::ssh::SshTarget,
    agent: &compose_fleet::ssh::AgentBinary,
    request: compose_fleet::proto::Request,
) -> Vec<compose_fleet::proto::ResponseFrame> {
    use compose_fleet::ssh::{connect_agent, OpenSsh, Options, Transport};
    let ssh = OpenSsh::new(&Options::default()).expect("transport");
    let session = ssh.connect(target).await.expect("connect to the lab host");
    let (mut client, _) = connect_agent(
        &session,
        &target.name,
        agent,
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("agent handshake");
    client.send(1, request).await.expect("send the request");
    let mut frames = Vec::new();
    loop {
        let frame = tokio::time::timeout(AGENT_DEADLINE, client.recv())
            .await
            .expect("the agent answers")
            .expect("a reply frame");
        let more = frame.more;
        frames.push(frame);
        if !more {
            break;
        }
    }
    frames
}

/// The final frame's answer; panics with the agent's error.
pub fn last_ok(frames: &[compose_fleet::proto::ResponseFrame]) -> compose_fleet::proto::Response {
    let last = frames.last().expect("at least one frame");
    match (&last.ok, &last.err) {
        (Some(ok), _) => ok.clone(),
        (_, Some(err)) => panic!("the agent answered an error: {err}"),
        _ => panic!("an empty frame"),
    }
}

/// A shell script for `Lab::faults().exec(host, …)` that prints `/proc/PID/cmdline` of every
/// process of *that host* naming `project`'s state directory (a shim, a container). Lab hosts
/// share one pid namespace, so other hosts' and other labs' processes are visible: they are
/// told apart by their cgroup, which from inside the host's cgroup namespace starts with `/..`.
pub fn project_processes_script(project: &str) -> String {
    // `[x]yz` keeps the pattern from matching this very shell's command line.
    let (first, rest) = project.split_at(1);
    format!(
        "for f in $(grep -l 'projects/[{first}]{rest}/' /proc/[0-9]*/cmdline 2>/dev/null); do \
           grep -q ':/\\.\\.' \"${{f%/cmdline}}/cgroup\" 2>/dev/null || echo \"$f\"; \
         done"
    )
}

/// The runtime a lab test drives the agents' protocol from.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
