//! The lab fleet: N hosts on this machine, each a network namespace with its own address on a
//! bridge, a private mount and UTS namespace and a real sshd; and a real OCI registry seeded with
//! test images built from busybox. For tests, examples and trying compose-fleet out. Needs root.
//!
//! Owns everything under the lab directory (default [`DEFAULT_DIR`]) and these kernel objects:
//! the bridge `cflab0` (10.250.0.1/24), veths `cflab0-N`, network namespaces `lab-N`, and the
//! `unreachable` routes for 10.250.0.0/16 and 10.213.0.0/16 in the root namespace. One lab is up
//! per machine at a time: the addresses are fixed.
//!
//! ```text
//! DIR/
//!   inventory.yaml  id_ed25519  id_ed25519.pub  known_hosts      for `compose-fleet -i …`
//!   lab.json                                                     how many hosts
//!   registry.yml registry.pid registry.log registry/ images.json the registry, its storage, seeds
//!   hosts/lab-N/{etc-ssh,state,run,tmp}/                         /etc/ssh, /var/lib/compose-fleet,
//!                                                                /run, /tmp of host lab-N
//! ```
//!
//! The helpers for fault injection ([`Lab::cut_off`], [`Lab::kill_sshd`], [`Lab::freeze`], …) are
//! how tests make a host fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::output;

pub mod host;
pub mod images;
pub mod net;
pub mod registry;
pub mod sys;

pub use host::Host;
use registry::Registry;

/// Where `lab up` puts the lab when `--dir` is not given.
pub const DEFAULT_DIR: &str = "/var/lib/compose-fleet-lab";
/// The lab bridge in the root namespace.
pub const BRIDGE: &str = "cflab0";
/// The bridge's address: the hosts' gateway to the registry.
pub const BRIDGE_ADDR: &str = "10.250.0.1";
pub const LAB_PREFIX_LEN: u8 = 24;
/// The lab's registry (plain http).
pub const REGISTRY: &str = "10.250.0.1:5000";
/// Ranges that must never leave this machine: the lab's, and the fleet's default pod CIDR.
pub const FENCED_CIDRS: [&str; 2] = ["10.250.0.0/16", "10.213.0.0/16"];
/// Hosts get 10.250.0.11 and up; keep within the /24.
pub const MAX_HOSTS: usize = 200;
/// Records which directory the lab that is up lives in.
pub const ACTIVE_MARKER: &str = "/run/compose-fleet-lab.dir";
/// `lab up` and `lab down` hold an exclusive lock on this file, so that two never interleave.
/// (Tests hold a different one, `/run/compose-fleet-lab.lock`, around a whole lab's lifetime.)
const COMMAND_LOCK: &str = "/run/compose-fleet-lab.cmd.lock";
/// How long `lab up` waits for the registry and every sshd to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the user can fix (not root, another lab is up): exit 1.
    #[error("{0}")]
    User(String),
    /// The machine is missing something or refused an operation: exit 2.
    #[error("{0}")]
    Env(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

/// A lab at a directory (it may or may not be up).
#[derive(Debug, Clone)]
pub struct Lab {
    dir: PathBuf,
}

/// What `lab status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub dir: PathBuf,
    pub registry_pid: Option<i32>,
    pub registry_answers: bool,
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub netns: bool,
    pub sshd_pid: Option<i32>,
    pub sshd_answers: bool,
}

/// What `lab up` did.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub hosts: usize,
    pub sshd_started: usize,
    pub images_pushed: usize,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LabFile {
    hosts: usize,
}

/// Fails unless we are root: the lab creates namespaces, links and mounts.
pub fn require_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::User(
            "the lab needs root (it creates network namespaces, a bridge and mounts); run it with sudo".into(),
        ))
    }
}

impl Lab {
    /// The lab at `dir` (made absolute, so that paths written into files stay valid).
    pub fn at(dir: impl AsRef<Path>) -> Lab {
        let dir = dir.as_ref();
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Lab { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.yaml")
    }
    pub fn identity(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    fn lab_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// The number of hosts recorded by the last `lab up` (0 when none).
    pub fn host_count(&self) -> usize {
        fs::read_to_string(self.lab_file())
            .ok()
            .and_then(|t| serde_json::from_str::<LabFile>(&t).ok())
            .map(|f| f.hosts)
            .unwrap_or(0)
    }

    /// The lab's hosts, `lab-1..lab-N`.
    pub fn hosts(&self) -> Vec<Host> {
        (1..=self.host_count())
            .map(|i| Host::new(&self.dir, i))
            .collect()
    }

    /// A host by name (`lab-N`).
    pub fn host(&self, name: &str) -> Result<Host, Error> {
        self.hosts()
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| {
                Error::User(format!(
                    "no lab host `{name}` in {} (hosts: lab-1..lab-{})",
                    self.dir.display(),
                    self.host_count()
                ))
            })
    }

    /// Brings the lab up with `hosts` hosts, reusing what is there and repairing what is missing.
    /// Returns once the registry and every sshd answer.
    pub fn up(&self, hosts: usize) -> Result<UpReport, Error> {
        require_root()?;
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(Error::User(format!(
                "--hosts must be between 1 and {MAX_HOSTS}"
            )));
        }
        let _lock = command_lock()?;
        self.check_not_other_lab()?;
        host::mkdir(&self.dir, 0o755)?;
        let previous = self.host_count();
        if previous > hosts {
            for host in self.hosts().into_iter().skip(hosts) {
                output::status(&format!("lab: removing {}", host.name));
                remove_host(&host);
            }
        }
        host::write(
            &self.lab_file(),
            &format!("{{\"hosts\": {hosts}}}\n"),
            0o644,
        )?;
        fs::write(ACTIVE_MARKER, self.dir.to_string_lossy().as_bytes())
            .map_err(|e| Error::Env(format!("cannot write {ACTIVE_MARKER}: {e}")))?;

        if !self.identity().exists() {
            output::status("lab: generating the lab's SSH key");
            let _ = fs::remove_file(self.identity().with_extension("pub"));
            sys::run(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "compose-fleet-lab",
                    "-f",
                    &self.identity().to_string_lossy(),
                ],
            )?;
        }
        let authorized =
            fs::read_to_string(self.identity().with_extension("pub")).map_err(|e| {
                Error::Env(format!(
                    "cannot read {}: {e}",
                    self.identity().with_extension("pub").display()
                ))
            })?;

        output::status(&format!(
            "lab: bridge {BRIDGE} {BRIDGE_ADDR}/{LAB_PREFIX_LEN}"
        ));
        net::ensure_bridge()?;
        let registry = Registry::new(&self.dir);
        registry.ensure_started()?;

        let mut started = 0;
        for host in self.hosts() {
            net::ensure_host(&host.name, host.index, &host.address)?;
            host.prepare(&authorized)?;
            // A frozen host (see `freeze`) is repaired too; SIGCONT is harmless to the running.
            for pid in host.processes() {
                sys::signal(pid, Signal::SIGCONT);
            }
            if host.sshd_pid().is_some() && sys::ssh_answers(host.ssh_addr()) {
                continue;
            }
            host.stop_sshd();
            output::status(&format!("lab: starting {} ({})", host.name, host.address));
            host.start_sshd(&self.dir)?;
            started += 1;
        }

        let deadline = Instant::now() + READY_TIMEOUT;
        if !sys::wait_until(remaining(deadline), Registry::answers) {
            return Err(Error::Env(format!(
                "the lab registry did not answer on {REGISTRY} within {}s; see {}",
                READY_TIMEOUT.as_secs(),
                self.dir.join("registry.log").display()
            )));
        }
        for host in self.hosts() {
            // Ours answers (it wrote its pid file), not a stale one holding the address.
            let ready = || host.sshd_pid().is_some() && sys::ssh_answers(host.ssh_addr());
            if !sys::wait_until(remaining(deadline), ready) {
                return Err(Error::Env(format!(
                    "sshd of lab host {} did not answer on {}:22 within {}s; see {} and {}",
                    host.name,
                    host.address,
                    READY_TIMEOUT.as_secs(),
                    host.root.join("sshd.err").display(),
                    host.private("run").join("sshd.log").display()
                )));
            }
        }

        let pushed = images::ensure_seeded(&self.dir.join("images.json"))?;
        if pushed > 0 {
            output::status(&format!("lab: pushed {pushed} image(s) to {REGISTRY}"));
        }
        self.write_known_hosts()?;
        self.write_inventory()?;
        output::status(&format!(
            "lab: up: {hosts} host(s); inventory {}",
            self.inventory().display()
        ));
        Ok(UpReport {
            hosts,
            sshd_started: started,
            images_pushed: pushed,
        })
    }

    /// Removes everything the lab made: processes, namespaces, links, routes, mounts, and the
    /// lab directory's contents. Idempotent.
    pub fn down(&self) -> Result<(), Error> {
        require_root()?;
        let _lock = command_lock()?;
        self.check_not_other_lab()?;
        let mut hosts = self.hosts();
        // Namespaces of this lab's naming whose record is lost (a deleted directory).
        for name in net::netns_list() {
            if let Some(index) = name
                .strip_prefix("lab-")
                .and_then(|n| n.parse::<usize>().ok())
            {
                if !hosts.iter().any(|h| h.index == index) {
                    hosts.push(Host::new(&self.dir, index));
                }
            }
        }
        for host in &hosts {
            output::status(&format!("lab: removing {}", host.name));
            remove_host(host);
        }
        Registry::new(&self.dir).stop();
        net::remove_bridge();
        for mount in sys::mounts_under(&self.dir) {
            sys::run_quiet("umount", &["-l", &mount]);
        }
        if self.dir.exists() && sys::mounts_under(&self.dir).is_empty() {
            for name in [
                "hosts",
                "registry",
                "registry.yml",
                "registry.pid",
                "registry.log",
                "images.json",
                "lab.json",
                "inventory.yaml",
                "known_hosts",
                "id_ed25519",
                "id_ed25519.pub",
            ] {
                let path = self.dir.join(name);
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
            let _ = fs::remove_dir(&self.dir);
        }
        if fs::read_to_string(ACTIVE_MARKER).is_ok_and(|d| Path::new(&d) == self.dir) {
            let _ = fs::remove_file(ACTIVE_MARKER);
        }
        output::status("lab: down");
        Ok(())
    }

    /// Whether each host's sshd and the registry are up.
    pub fn status(&self) -> Result<Status, Error> {
        let registry = Registry::new(&self.dir);
        Ok(Status {
            dir: self.dir.clone(),
            registry_pid: registry.pid(),
            registry_answers: Registry::answers(),
            hosts: self
                .hosts()
                .into_iter()
                .map(|h| HostStatus {
                    netns: net::netns_exists(&h.name),
                    sshd_pid: h.sshd_pid(),
                    sshd_answers: sys::ssh_answers(h.ssh_addr()),
                    address: h.address,
                    name: h.name,
                })
                .collect(),
        })
    }

    /// Takes a host off the lab network (`eth0` down): connections to it hang or time out.
    pub fn cut_off(&self, name: &str) -> Result<(), Error> {
        net::set_host_link(&self.host(name)?.name, false)
    }

    /// Puts a host cut off by [`Lab::cut_off`] back on the network.
    pub fn reconnect(&self, name: &str) -> Result<(), Error> {
        net::set_host_link(&self.host(name)?.name, true)
    }

    /// Kills a host's sshd: new connections are refused; the host's other processes keep running.
    pub fn kill_sshd(&self, name: &str) -> Result<(), Error> {
        self.host(name)?.stop_sshd();
        Ok(())
    }

    /// Starts a host's sshd again (after [`Lab::kill_sshd`]) and waits until it answers.
    pub fn start_sshd(&self, name: &str) -> Result<(), Error> {
        let host = self.host(name)?;
        if host.sshd_pid().is_none() {
            host.stop_sshd();
            host.start_sshd(&self.dir)?;
        }
        let ready = || host.sshd_pid().is_some() && sys::ssh_answers(host.ssh_addr());
        if sys::wait_until(READY_TIMEOUT, ready) {
            Ok(())
        } else {
            Err(Error::Env(format!(
                "sshd of lab host {name} did not come back"
            )))
        }
    }

    /// Gives a host a new SSH host key and restarts its sshd, leaving `known_hosts` as it was:
    /// the host now presents a key that does not match the recorded one.
    pub fn change_host_key(&self, name: &str) -> Result<(), Error> {
        let host = self.host(name)?;
        host.stop_sshd();
        let _ = fs::remove_file(host.host_key());
        let authorized = fs::read_to_string(self.identity().with_extension("pub"))
            .map_err(|e| Error::Env(format!("cannot read the lab's public key: {e}")))?;
        host.prepare(&authorized)?;
        self.start_sshd(name)
    }

    /// Stops (SIGSTOP) every process of a host: connections are accepted by the kernel but
    /// nothing answers.
    pub fn freeze(&self, name: &str) -> Result<(), Error> {
        for pid in self.host(name)?.processes() {
            sys::signal(pid, Signal::SIGSTOP);
        }
        Ok(())
    }

    /// Continues the processes stopped by [`Lab::freeze`].
    pub fn thaw(&self, name: &str) -> Result<(), Error> {
        for pid in self.host(name)?.processes() {
            sys::signal(pid, Signal::SIGCONT);
        }
        Ok(())
    }

    /// A command that runs `argv` inside a host: its network, mount and UTS namespaces (those of
    /// its sshd, so the host's own `/var/lib/compose-fleet`, `/run`, `/tmp` and hostname).
    pub fn exec(&self, name: &str, argv: &[String]) -> Result<Command, Error> {
        let host = self.host(name)?;
        let pid = host.sshd_pid().ok_or_else(|| {
            Error::User(format!(
                "sshd of lab host {name} is not running; run `compose-fleet lab up` to repair"
            ))
        })?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-n", "-m", "-u", "--"])
            .args(argv);
        Ok(cmd)
    }

    fn check_not_other_lab(&self) -> Result<(), Error> {
        let Ok(active) = fs::read_to_string(ACTIVE_MARKER) else {
            return Ok(());
        };
        let active = PathBuf::from(active.trim());
        if active != self.dir && active.join("lab.json").exists() && net::link_exists(BRIDGE) {
            return Err(Error::User(format!(
                "another lab is up at {}; run `compose-fleet lab down --dir {}` first",
                active.display(),
                active.display()
            )));
        }
        Ok(())
    }

    fn write_known_hosts(&self) -> Result<(), Error> {
        let mut text = String::new();
        for host in self.hosts() {
            text.push_str(&host.known_hosts_line()?);
            text.push('\n');
        }
        host::write(&self.known_hosts(), &text, 0o644)
    }

    fn write_inventory(&self) -> Result<(), Error> {
        const ZONES: [&str; 3] = ["a", "b", "c"];
        let mut text = format!(
            "# The lab fleet: written by `compose-fleet lab up`.\n\
             defaults: {{ user: root, port: 22, identity_file: {}, known_hosts: {} }}\n\
             registries: {{ \"{REGISTRY}\": {{ insecure: true }} }}\n\
             hosts:\n",
            yaml_path(&self.identity()),
            yaml_path(&self.known_hosts())
        );
        for host in self.hosts() {
            text.push_str(&format!(
                "  {}: {{ address: {}, labels: {{ zone: {} }}, capacity: {{ cpus: 2, memory: 4GiB }} }}\n",
                host.name,
                host.address,
                ZONES[(host.index - 1) % ZONES.len()]
            ));
        }
        host::write(&self.inventory(), &text, 0o644)
    }
}

/// A path as a YAML flow scalar: plain when that is unambiguous, else double-quoted.
fn yaml_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if plain {
        text.into_owned()
    } else {
        serde_json::Value::String(text.into_owned()).to_string()
    }
}

/// Waits for the exclusive command lock; released when dropped.
fn command_lock() -> Result<nix::fcntl::Flock<fs::File>, Error> {
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(COMMAND_LOCK)
        .map_err(|e| Error::Env(format!("cannot open {COMMAND_LOCK}: {e}")))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::Env(format!("cannot lock {COMMAND_LOCK}: {e}")))
}

/// Kills every process of a host, then removes its namespace and veth pair.
fn remove_host(host: &Host) {
    host.stop_sshd();
    sys::terminate(&host.processes());
    net::remove_host(&host.name, host.index);
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_paths_are_quoted_only_when_yaml_needs_it() {
        assert_eq!(
            yaml_path(Path::new("/tmp/cf-lab-x1/id_ed25519")),
            "/tmp/cf-lab-x1/id_ed25519"
        );
        assert_eq!(
            yaml_path(Path::new("/srv/my lab, 2/k")),
            "\"/srv/my lab, 2/k\""
        );
        assert_eq!(yaml_path(Path::new("/srv/a\"b")), "\"/srv/a\\\"b\"");
    }

    #[test]
    fn the_inventory_is_written_in_the_agreed_format() {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::at(dir.path());
        host::write(&lab.lab_file(), "{\"hosts\": 4}", 0o644).unwrap();
        lab.write_inventory().unwrap();
        let text = fs::read_to_string(lab.inventory()).unwrap();
        let d = dir.path().display();
        let expected = format!(
            "# The lab fleet: written by `compose-fleet lab up`.\n\
             defaults: {{ user: root, port: 22, identity_file: {d}/id_ed25519, known_hosts: {d}/known_hosts }}\n\
             registries: {{ \"10.250.0.1:5000\": {{ insecure: true }} }}\n\
             hosts:\n\
             \x20 lab-1: {{ address: 10.250.0.11, labels: {{ zone: a }}, capacity: {{ cpus: 2, memory: 4GiB }} }}\n\
             \x20 lab-2: {{ address: 10.250.0.12, labels: {{ zone: b }}, capacity: {{ cpus: 2, memory: 4GiB }} }}\n\
             \x20 lab-3: {{ address: 10.250.0.13, labels: {{ zone: c }}, capacity: {{ cpus: 2, memory: 4GiB }} }}\n\
             \x20 lab-4: {{ address: 10.250.0.14, labels: {{ zone: a }}, capacity: {{ cpus: 2, memory: 4GiB }} }}\n"
        );
        assert_eq!(text, expected);
        let fleet =
            crate::inventory::load(&lab.inventory()).unwrap_or_else(|e| panic!("{}", e.render()));
        assert_eq!(fleet.hosts.len(), 4);

        // A directory YAML would misread unquoted still loads to the right paths.
        let odd = tempfile::Builder::new()
            .prefix("lab, #1: ")
            .tempdir()
            .unwrap();
        let lab = Lab::at(odd.path());
        host::write(&lab.lab_file(), "{\"hosts\": 1}", 0o644).unwrap();
        lab.write_inventory().unwrap();
        let fleet =
            crate::inventory::load(&lab.inventory()).unwrap_or_else(|e| panic!("{}", e.render()));
        assert_eq!(
            fleet.hosts[0].identity_file.as_deref(),
            Some(lab.identity().as_path())
        );
        assert_eq!(
            fleet.hosts[0].known_hosts.as_deref(),
            Some(lab.known_hosts().as_path())
        );
    }
}
