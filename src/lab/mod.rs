//! The lab fleet: labs of N hosts on this machine, each host a network namespace with its own
//! address on a bridge, a private mount and UTS namespace and a real sshd; and per lab a real OCI
//! registry seeded with test images built from busybox. For tests, examples and trying
//! compose-fleet out. Needs root.
//!
//! Labs live side by side, each under its own name (default [`index::DEFAULT_NAME`]), with its
//! own subnets, bridges, host names, registry address and directory (default
//! [`DEFAULT_DIR`] for the default lab): [`index`] records them and derives every name and
//! address. Shared by all labs: the `unreachable` routes for 10.250.0.0/16 and 10.213.0.0/16 in
//! the root namespace, made by the first lab and removed with the last.
//!
//! ```text
//! DIR/
//!   inventory.yaml  id_ed25519  id_ed25519.pub  known_hosts      for `compose-fleet -i …`
//!   lab.json                                                     the lab's record (see index)
//!   registry.yml registry.pid registry.log registry/ images.json the registry, its storage, seeds
//!   hosts/NAME-N/{etc-ssh,state,run,tmp,home}/                   /etc/ssh, /var/lib/compose-fleet,
//!                                                                /run, /tmp, /home of host NAME-N
//! ```
//! and, outside the directory, the users `cf-NAME-sudo` and `cf-NAME-pw` with their rules in
//! `/etc/sudoers.d/compose-fleet-lab-NAME` (see [`users`]).
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
pub mod index;
pub mod net;
pub mod registry;
pub mod sys;
pub mod users;

pub use host::Host;
pub use index::{Record, DEFAULT_NAME, MAX_HOSTS, MAX_SITES};
use registry::Registry;

/// Where `lab up` puts the default lab when `--dir` is not given (other labs: `DIR-NAME`).
pub const DEFAULT_DIR: &str = "/var/lib/compose-fleet-lab";
/// Ranges that must never leave this machine: the labs', and the fleet's default pod CIDR.
pub const FENCED_CIDRS: [&str; 2] = ["10.250.0.0/16", "10.213.0.0/16"];
/// Names the directory of the lab on 10.250.0.0/24, for checkouts from before labs had names:
/// their `lab up` refuses to start while this names a lab that is up.
pub const ACTIVE_MARKER: &str = "/run/compose-fleet-lab.dir";
/// `lab up` and `lab down` hold an exclusive lock on this file while they read or change the
/// index of labs and the shared routes (each also holds its lab's own lock throughout).
const COMMAND_LOCK: &str = "/run/compose-fleet-lab.cmd.lock";
/// How long `lab up` waits for the registry and every sshd to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the user can fix (not root, a name taken): exit 1.
    #[error("{0}")]
    User(String),
    /// The machine is missing something or refused an operation: exit 2.
    #[error("{0}")]
    Env(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

/// A lab: a name and a directory (it may or may not be up).
#[derive(Debug, Clone)]
pub struct Lab {
    name: String,
    dir: PathBuf,
}

/// What `lab status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub name: String,
    pub dir: PathBuf,
    pub registry: String,
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

/// One line of `lab list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub name: String,
    pub dir: PathBuf,
    /// One /24 per site.
    pub subnets: Vec<String>,
    pub hosts: usize,
    /// Every bridge and host namespace exists and the registry runs.
    pub up: bool,
}

/// What `lab up` did.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub hosts: usize,
    pub sshd_started: usize,
    pub images_pushed: usize,
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

/// The labs recorded on this machine, and whether each is up.
pub fn list() -> Vec<Listing> {
    index::list()
        .into_iter()
        .map(|r| {
            let up = (0..r.sites).all(|s| net::link_exists(&r.bridge(s)))
                && (1..=r.hosts).all(|i| net::netns_exists(&r.host_name(i)))
                && Registry::new(&r).pid().is_some();
            Listing {
                subnets: (0..r.sites).map(|s| r.subnet(s)).collect(),
                name: r.name,
                dir: r.dir,
                hosts: r.hosts,
                up,
            }
        })
        .collect()
}

/// The recorded lab that has a host of this name (host names are unique across labs).
pub fn lab_of_host(host: &str) -> Option<Lab> {
    index::list()
        .into_iter()
        .find(|r| (1..=r.hosts).any(|i| r.host_name(i) == host))
        .map(|r| Lab {
            name: r.name,
            dir: r.dir,
        })
}

fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

impl Lab {
    /// The lab `name` at `dir` (made absolute, so that paths written into files stay valid).
    pub fn new(name: &str, dir: impl AsRef<Path>) -> Result<Lab, Error> {
        index::check_name(name)?;
        Ok(Lab {
            name: name.to_string(),
            dir: absolute(dir.as_ref()),
        })
    }

    /// The lab a command means: by `--name`, by `--dir`, or the default lab. Its directory is the
    /// recorded one, else `dir`, else the name's default. A `dir` that contradicts the record of
    /// a lab that still has its directory is an error.
    pub fn find(name: Option<&str>, dir: Option<&Path>) -> Result<Lab, Error> {
        let dir = dir.map(absolute);
        let name = match (name, &dir) {
            (Some(name), _) => name.to_string(),
            (None, Some(dir)) => index::list()
                .into_iter()
                .find(|r| &r.dir == dir)
                .map(|r| r.name)
                .or_else(|| read_record(dir).map(|r| r.name))
                .unwrap_or_else(|| DEFAULT_NAME.to_string()),
            (None, None) => DEFAULT_NAME.to_string(),
        };
        index::check_name(&name)?;
        let dir = match (index::get(&name), dir) {
            // A lab whose directory was lost may be taken over at another (see `register`).
            (Some(r), Some(dir)) if r.dir != dir && r.dir.join("lab.json").exists() => {
                return Err(Error::User(format!(
                    "lab `{name}` lives in {}, not {}; pass `--dir {}` (or no --dir), or choose another --name",
                    r.dir.display(),
                    dir.display(),
                    r.dir.display()
                )))
            }
            (Some(_), Some(dir)) | (None, Some(dir)) => dir,
            (Some(r), None) => r.dir,
            (None, None) => index::default_dir(&name),
        };
        Ok(Lab { name, dir })
    }

    pub fn name(&self) -> &str {
        &self.name
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

    /// The lab's record: the index's, else the copy in its directory; `None` before `lab up`.
    pub fn record(&self) -> Option<Record> {
        index::get(&self.name)
            .filter(|r| r.dir == self.dir)
            .or_else(|| read_record(&self.dir))
            .filter(|r| r.name == self.name)
    }

    /// The lab's registry, `HOST:PORT` (once it has been brought up).
    pub fn registry(&self) -> Option<String> {
        self.record().map(|r| r.registry())
    }

    /// The lab's hosts, `NAME-1..NAME-N`.
    pub fn hosts(&self) -> Vec<Host> {
        match self.record() {
            Some(r) => (1..=r.hosts).map(|i| Host::new(&r, i)).collect(),
            None => Vec::new(),
        }
    }

    /// A host by name (`NAME-N`).
    pub fn host(&self, name: &str) -> Result<Host, Error> {
        let hosts = self.hosts();
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let hint = match (names.first(), names.last()) {
            (Some(first), Some(last)) => format!("hosts: {first}..{last}"),
            _ => "it has no hosts; run `compose-fleet lab up`".to_string(),
        };
        hosts
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .ok_or_else(|| {
                Error::User(format!(
                    "no host `{name}` in lab `{}` at {} ({hint})",
                    self.name,
                    self.dir.display()
                ))
            })
    }

    /// Brings the lab up with `hosts` hosts on `sites` sites (`None`: as recorded, else 1),
    /// reusing what is there and repairing what is missing. Returns once the registry and every
    /// sshd answer.
    pub fn up(&self, hosts: usize, sites: Option<usize>) -> Result<UpReport, Error> {
        require_root()?;
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(Error::User(format!(
                "--hosts must be between 1 and {MAX_HOSTS}"
            )));
        }
        if sites.is_some_and(|s| s == 0 || s > MAX_SITES) {
            return Err(Error::User(format!(
                "--sites must be between 1 and {MAX_SITES}"
            )));
        }
        index::ensure_dir()?;
        let _lab_lock = lock(&index::lock_path(&self.name))?;
        let (record, previous) = self.register(hosts, sites)?;
        host::mkdir(&self.dir, 0o755)?;
        if let Some(previous) = &previous {
            for index in hosts + 1..=previous.hosts {
                let host = Host::new(previous, index);
                output::status(&format!("lab: removing {}", host.name));
                remove_host(previous, &host);
            }
        }
        let record_text = serde_json::to_string_pretty(&record)
            .map_err(|e| Error::Internal(format!("lab record: {e}")))?;
        host::write(&self.lab_file(), &record_text, 0o644)?;

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
                    &format!("compose-fleet-lab {}", self.name),
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

        let subnets: Vec<String> = (0..record.sites).map(|s| record.subnet(s)).collect();
        output::status(&format!(
            "lab {}: {} on {}",
            self.name,
            subnets.join(", "),
            (0..record.sites)
                .map(|s| record.bridge(s))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        net::ensure_sites(&record)?;
        let registry = Registry::new(&record);
        registry.ensure_started()?;

        // Non-root users for `become` (see `users`): only where sudo is there to use.
        let with_users = users::sudo_installed();
        if with_users {
            let _lock = lock(Path::new(COMMAND_LOCK))?;
            users::ensure(&self.name)?;
        } else {
            output::status("lab: sudo is not installed: no non-root (`become`) users");
        }
        let mut started = 0;
        for host in self.hosts() {
            net::ensure_host(&record, &host)?;
            host.prepare(&authorized)?;
            if with_users {
                for user in [
                    users::sudo_user(&self.name),
                    users::password_user(&self.name),
                ] {
                    users::make_home(&host.private("home"), &user)?;
                }
            }
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
        if !sys::wait_until(remaining(deadline), || registry.answers()) {
            return Err(Error::Env(format!(
                "the lab registry did not answer on {} within {}s; see {}",
                record.registry(),
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

        let pushed = images::ensure_seeded(&self.dir.join("images.json"), &record.registry())?;
        if pushed > 0 {
            output::status(&format!(
                "lab: pushed {pushed} image(s) to {}",
                record.registry()
            ));
        }
        self.write_known_hosts()?;
        self.write_inventory()?;
        output::status(&format!(
            "lab {}: up: {hosts} host(s); inventory {}",
            self.name,
            self.inventory().display()
        ));
        Ok(UpReport {
            hosts,
            sshd_started: started,
            images_pushed: pushed,
        })
    }

    /// Records the lab in the index (allocating its subnets the first time) before anything is
    /// made, so that `lab down` finds whatever a failed `lab up` left. Makes the shared routes.
    /// Returns the new record and the previous one.
    fn register(
        &self,
        hosts: usize,
        sites: Option<usize>,
    ) -> Result<(Record, Option<Record>), Error> {
        let _lock = lock(Path::new(COMMAND_LOCK))?;
        let all = index::list();
        if let Some(other) = all
            .iter()
            .find(|r| r.dir == self.dir && r.name != self.name)
        {
            return Err(Error::User(format!(
                "{} is the directory of lab `{}`; choose another --dir for lab `{}`",
                self.dir.display(),
                other.name,
                self.name
            )));
        }
        let previous = index::get(&self.name);
        if let Some(p) = &previous {
            // A lab whose directory was lost is taken over; one that still has it is not.
            if p.dir != self.dir && p.dir.join("lab.json").exists() {
                return Err(Error::User(format!(
                    "a lab named `{}` is up at {}; pass `--dir {}`, choose another --name, or run `compose-fleet lab down --name {}` first",
                    self.name,
                    p.dir.display(),
                    p.dir.display(),
                    self.name
                )));
            }
        }
        let sites = sites.or(previous.as_ref().map(|p| p.sites)).unwrap_or(1);
        let base = match &previous {
            Some(p) if p.sites == sites => p.base,
            Some(p) => {
                return Err(Error::User(format!(
                    "lab `{}` has {} site(s); to give it {sites}, run `compose-fleet lab down --name {}` first",
                    self.name, p.sites, self.name
                )))
            }
            None => {
                let mut others: Vec<Record> =
                    all.into_iter().filter(|r| r.name != self.name).collect();
                others.extend(unrecorded_lab(&others));
                index::allocate(&self.name, sites, &others).ok_or_else(|| {
                    Error::User(format!(
                        "no room for {sites} more /24(s) in 10.250.0.0/16: {} labs are up; see `compose-fleet lab list`",
                        others.len()
                    ))
                })?
            }
        };
        let record = Record {
            name: self.name.clone(),
            dir: self.dir.clone(),
            base,
            sites,
            hosts,
        };
        // Surplus hosts of a shrinking lab are no longer in the record; `lab down` still finds
        // them by their names should removing them fail.
        index::put(&record)?;
        net::ensure_fences()?;
        if base == 0 {
            fs::write(ACTIVE_MARKER, self.dir.to_string_lossy().as_bytes())
                .map_err(|e| Error::Env(format!("cannot write {ACTIVE_MARKER}: {e}")))?;
        }
        Ok((record, previous))
    }

    /// Removes everything the lab made: processes, namespaces, links, mounts, the lab directory's
    /// contents and its record; the shared routes too when it was the last lab. Other labs are
    /// left as they are. Idempotent.
    pub fn down(&self) -> Result<(), Error> {
        require_root()?;
        index::ensure_dir()?;
        let _lab_lock = lock(&index::lock_path(&self.name))?;
        let record = self.record();
        let mut hosts = self.hosts();
        // Namespaces of this lab's naming that the record does not name (a lost record, or a
        // `lab up` that failed while shrinking the lab).
        let prefix = format!("{}-", self.name);
        for netns in net::netns_list() {
            let Some(index) = netns
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|i| *i >= 1)
            else {
                continue;
            };
            match &record {
                Some(r) if !hosts.iter().any(|h| h.index == index) => {
                    hosts.push(Host::new(r, index))
                }
                Some(_) => {}
                None => {
                    // Without a record only the namespace is known; its veth goes with it.
                    output::status(&format!("lab: removing {netns}"));
                    sys::terminate(&host::with_descendants(&net::netns_pids(&netns)));
                    net::remove_host(&netns, "");
                }
            }
        }
        if let Some(record) = &record {
            for host in &hosts {
                output::status(&format!("lab: removing {}", host.name));
                remove_host(record, host);
            }
            Registry::new(record).stop();
            net::remove_sites(record);
        }
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
        {
            let _lock = lock(Path::new(COMMAND_LOCK))?;
            users::remove(&self.name);
            if index::get(&self.name).is_some_and(|r| r.dir == self.dir || !r.dir.exists()) {
                index::remove(&self.name);
            }
            if index::list().is_empty() {
                net::remove_fences();
            }
            if record.is_some_and(|r| r.base == 0)
                && fs::read_to_string(ACTIVE_MARKER).is_ok_and(|d| Path::new(&d) == self.dir)
            {
                let _ = fs::remove_file(ACTIVE_MARKER);
            }
        }
        // Still holding it: a waiter that opened it before retries on a new file (see `lock`).
        let _ = fs::remove_file(index::lock_path(&self.name));
        output::status(&format!("lab {}: down", self.name));
        Ok(())
    }

    /// Whether each host's sshd and the registry are up.
    pub fn status(&self) -> Result<Status, Error> {
        let record = self.record().ok_or_else(|| self.not_up())?;
        let registry = Registry::new(&record);
        Ok(Status {
            name: self.name.clone(),
            dir: self.dir.clone(),
            registry: record.registry(),
            registry_pid: registry.pid(),
            registry_answers: registry.answers(),
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

    fn not_up(&self) -> Error {
        Error::User(format!(
            "no lab `{}` at {}; see `compose-fleet lab list`, or run `compose-fleet lab up --name {}`",
            self.name,
            self.dir.display(),
            self.name
        ))
    }

    /// Takes a host off the lab network (`eth0` down): connections to it hang or time out.
    pub fn cut_off(&self, name: &str) -> Result<(), Error> {
        net::set_host_link(&self.host(name)?.name, false)
    }

    /// Puts a host cut off by [`Lab::cut_off`] back on the network, with its routes.
    pub fn reconnect(&self, name: &str) -> Result<(), Error> {
        let host = self.host(name)?;
        let record = self.record().ok_or_else(|| self.not_up())?;
        net::set_host_link(&host.name, true)?;
        net::ensure_host(&record, &host)
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

    /// A command that runs `argv` inside a host: its network, mount, UTS and cgroup namespaces
    /// (those of its sshd, so the host's own `/var/lib/compose-fleet`, `/run`, `/tmp`, hostname
    /// and cgroups; a process of another host shows its cgroup as `/../…` there).
    pub fn exec(&self, name: &str, argv: &[String]) -> Result<Command, Error> {
        let host = self.host(name)?;
        let pid = host.sshd_pid().ok_or_else(|| {
            Error::User(format!(
                "sshd of lab host {name} is not running; run `compose-fleet lab up --name {}` to repair",
                self.name
            ))
        })?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-n", "-m", "-u", "-C", "--"])
            .args(argv);
        Ok(cmd)
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
        let record = self.record().ok_or_else(|| self.not_up())?;
        let mut text = format!(
            "# The lab fleet `{}`: written by `compose-fleet lab up`.\n\
             defaults: {{ user: root, port: 22, identity_file: {}, known_hosts: {} }}\n\
             registries: {{ \"{}\": {{ insecure: true }} }}\n\
             hosts:\n",
            self.name,
            yaml_path(&self.identity()),
            yaml_path(&self.known_hosts()),
            record.registry()
        );
        for host in self.hosts() {
            // A site label only where there are sites to tell apart.
            let site = if record.sites > 1 {
                format!(", site: s{}", record.site_of(host.index) + 1)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "  {}: {{ address: {}, labels: {{ zone: {}{site} }}, capacity: {{ cpus: 2, memory: 4GiB }} }}\n",
                host.name,
                host.address,
                ZONES[(host.index - 1) % ZONES.len()]
            ));
        }
        host::write(&self.inventory(), &text, 0o644)
    }
}

/// A lab on 10.250.0.0/24 that a checkout from before labs had names brought up: it is in no
/// record, but [`ACTIVE_MARKER`] names its directory and its bridge exists. Its /24 is taken.
fn unrecorded_lab(recorded: &[Record]) -> Option<Record> {
    let dir = PathBuf::from(fs::read_to_string(ACTIVE_MARKER).ok()?.trim());
    let up = dir.join("lab.json").exists() && net::link_exists("cflab0");
    (up && !recorded.iter().any(|r| r.dir == dir)).then(|| Record {
        name: String::new(),
        dir,
        base: 0,
        sites: 1,
        hosts: 0,
    })
}

/// The record kept in a lab directory (`DIR/lab.json`).
fn read_record(dir: &Path) -> Option<Record> {
    let text = fs::read_to_string(dir.join("lab.json")).ok()?;
    serde_json::from_str(&text).ok()
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

/// Waits for an exclusive lock on `path`; released when dropped. The file may be removed by its
/// holder (`lab down` removes its lab's): a lock won on a file no longer at `path` is retried.
fn lock(path: &Path) -> Result<nix::fcntl::Flock<fs::File>, Error> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::Env(format!("cannot open {}: {e}", path.display())))?;
        let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Env(format!("cannot lock {}: {e}", path.display())))?;
        let held = locked.metadata().map(|m| (m.dev(), m.ino())).ok();
        let there = fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        if held.is_some() && held == there {
            return Ok(locked);
        }
    }
}

/// Kills every process of a host, then removes its namespace and veth pair.
fn remove_host(lab: &Record, host: &Host) {
    host.stop_sshd();
    sys::terminate(&host.processes());
    host.remove_cgroups();
    net::remove_host(&host.name, &lab.veth(host.index));
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

    /// A lab as `lab up` records it, without the index (the record in its directory).
    fn recorded(name: &str, dir: &Path, base: u8, sites: usize, hosts: usize) -> Lab {
        let lab = Lab::new(name, dir).unwrap();
        let record = Record {
            name: name.into(),
            dir: lab.dir().to_path_buf(),
            base,
            sites,
            hosts,
        };
        let text = serde_json::to_string(&record).unwrap();
        host::write(&lab.lab_file(), &text, 0o644).unwrap();
        lab
    }

    #[test]
    fn a_lab_is_found_by_name_or_by_the_record_in_its_directory() {
        let name = format!("unit-{}", std::process::id());
        let lab = Lab::find(Some(&name), None).unwrap();
        assert_eq!(lab.dir(), index::default_dir(&name));
        assert_eq!(
            index::default_dir(&name),
            Path::new(&format!("{DEFAULT_DIR}-{name}"))
        );
        assert_eq!(Lab::find(None, None).unwrap().name(), DEFAULT_NAME);
        // By directory alone: the name comes from the record in it.
        let dir = tempfile::tempdir().unwrap();
        recorded(&name, dir.path(), 30, 1, 1);
        let found = Lab::find(None, Some(dir.path())).unwrap();
        assert_eq!((found.name(), found.dir()), (name.as_str(), dir.path()));
        assert_eq!(found.registry().as_deref(), Some("10.250.30.1:5000"));
        // (A directory with no record means the default lab, whose record this machine may
        // hold: the lab tests check that against the real index.)
        assert!(matches!(
            Lab::find(Some("Bad_Name"), None),
            Err(Error::User(_))
        ));
    }

    #[test]
    fn the_inventory_is_written_in_the_agreed_format() {
        let dir = tempfile::tempdir().unwrap();
        let lab = recorded("lab", dir.path(), 0, 1, 4);
        lab.write_inventory().unwrap();
        let text = fs::read_to_string(lab.inventory()).unwrap();
        let d = dir.path().display();
        let expected = format!(
            "# The lab fleet `lab`: written by `compose-fleet lab up`.\n\
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

        // Another lab, on two sites: its own names, subnets, registry, and a site label.
        let dir = tempfile::tempdir().unwrap();
        let lab = recorded("t-1-2", dir.path(), 20, 2, 3);
        lab.write_inventory().unwrap();
        let text = fs::read_to_string(lab.inventory()).unwrap();
        assert!(text.contains("registries: { \"10.250.20.1:5000\": { insecure: true } }"));
        for line in [
            "  t-1-2-1: { address: 10.250.20.11, labels: { zone: a, site: s1 }",
            "  t-1-2-2: { address: 10.250.21.12, labels: { zone: b, site: s2 }",
            "  t-1-2-3: { address: 10.250.20.13, labels: { zone: c, site: s1 }",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        let fleet =
            crate::inventory::load(&lab.inventory()).unwrap_or_else(|e| panic!("{}", e.render()));
        assert_eq!(fleet.hosts.len(), 3);

        // A directory YAML would misread unquoted still loads to the right paths.
        let odd = tempfile::Builder::new()
            .prefix("lab, #1: ")
            .tempdir()
            .unwrap();
        let lab = recorded("lab", odd.path(), 0, 1, 1);
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
