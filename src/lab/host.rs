//! One lab host: its private directories, its host key, and its sshd, started inside the host's
//! network namespace in a private mount and UTS namespace so that every SSH session on it sees
//! the host's own hostname, `/var/lib/compose-fleet`, `/run`, `/tmp` and `/etc/ssh`.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::index::Record;
use super::sys::{self, run};
use super::{net, Error};

/// Directories of a host that are bind-mounted over the machine's, in its own mount namespace:
/// (name under `DIR/hosts/HOST/`, mount point).
pub const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("etc-ssh", "/etc/ssh"),
    ("state", "/var/lib/compose-fleet"),
    ("run", "/run"),
    ("tmp", "/tmp"),
    // Users' homes, where a `become` upload is staged: one host's is not another's.
    ("home", "/home"),
];

/// What a lab host's listening sshd has in its command line, arguments joined by spaces: before
/// and after sshd retitles itself (`sshd: /usr/sbin/sshd -D -f … [listener] …`); sessions are
/// `sshd: USER@…`.
pub const SSHD_LISTENER: &str = "/usr/sbin/sshd -D -f /etc/ssh/sshd_config";

/// A lab host as the lab sees it from the root namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// `LAB-N`: the host's name, hostname and network namespace.
    pub name: String,
    /// N, from 1.
    pub index: usize,
    /// Its address on its site's bridge.
    pub address: String,
    ip: std::net::Ipv4Addr,
    /// `DIR/hosts/NAME`.
    pub root: PathBuf,
}

/// A cgroup hierarchy (or the v1 tmpfs holding them) the machine mounts under `/sys/fs/cgroup`,
/// from a `mountinfo` line.
struct CgroupMount<'a> {
    mount_point: &'a str,
    /// `tmpfs`, `cgroup` (v1) or `cgroup2`.
    fstype: &'a str,
    /// A v1 hierarchy's controllers, sorted (named hierarchies such as systemd's have none).
    controllers: Vec<&'a str>,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount<'_>> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        if mount_point != "/sys/fs/cgroup" && !mount_point.starts_with("/sys/fs/cgroup/") {
            continue;
        }
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let _source = right.next();
        let mut controllers: Vec<&str> = right
            .next()
            .unwrap_or_default()
            .split(',')
            .filter(|o| *o != "rw" && *o != "ro" && !o.starts_with("name="))
            .collect();
        controllers.sort_unstable();
        out.push(CgroupMount {
            mount_point,
            fstype,
            controllers,
        });
    }
    out
}

/// Shell lines that mount, under a fresh `/sys`, the cgroup hierarchies that `mountinfo` (the
/// machine's) shows under `/sys/fs/cgroup`: the v2 tree, or v1's tmpfs with one mount per
/// controller set (mounting a v1 controller set again attaches the existing hierarchy).
fn cgroup_mount_script(mountinfo: &str) -> String {
    let mut script = String::new();
    for m in cgroup_mounts(mountinfo) {
        let command = match m.fstype {
            "tmpfs" => "mount -t tmpfs -o mode=755 cgroup_root".to_string(),
            "cgroup2" => "mount -t cgroup2 cgroup2".to_string(),
            // Named hierarchies without controllers (systemd's) are not needed by the agent.
            "cgroup" if !m.controllers.is_empty() => {
                format!("mount -t cgroup -o {} cgroup", m.controllers.join(","))
            }
            _ => continue,
        };
        let target = quote(m.mount_point);
        script.push_str(&format!(
            "mkdir -p {target} 2>/dev/null; {command} {target} || echo 'lab: cannot mount {} on {}' >&2\n",
            m.fstype, m.mount_point
        ));
    }
    script
}

/// The machine-side directory, per cgroup hierarchy mounted under `/sys/fs/cgroup`, that becomes a
/// lab host's own cgroup root: `MOUNT/OWN/compose-fleet-lab/HOST`, where OWN is this process's
/// cgroup in that hierarchy (so the machine's limits on us still hold), or the machine root on a
/// pure v2 machine (a v2 cgroup with processes cannot delegate controllers to children).
///
/// Why: a real host has a kernel of its own; lab hosts share one. Without a cgroup namespace
/// every lab host's agent would use the same `compose-fleet/PROJECT/POD` cgroups, and removing
/// a pod on one host would kill the same-named pod of another lab (`delete` kills what its
/// cgroup holds).
fn cgroup_dirs(mountinfo: &str, self_cgroup: &str, host: &str) -> Vec<PathBuf> {
    // `ID:CONTROLLERS:PATH`; the v2 tree is ID 0 (a named v1 hierarchy also lists none).
    let own: Vec<(&str, Vec<&str>, &str)> = self_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mut set: Vec<&str> = controllers
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
                .collect();
            set.sort_unstable();
            Some((id, set, path))
        })
        .collect();
    let mut dirs = Vec::new();
    for m in cgroup_mounts(mountinfo) {
        let own_path = match m.fstype {
            "cgroup2" if m.mount_point == "/sys/fs/cgroup" => Some("/"),
            "cgroup2" => own.iter().find(|(id, _, _)| *id == "0").map(|o| o.2),
            "cgroup" if !m.controllers.is_empty() => own
                .iter()
                .find(|(_, c, _)| *c == m.controllers)
                .map(|o| o.2),
            _ => None,
        };
        if let Some(own_path) = own_path {
            dirs.push(
                Path::new(m.mount_point)
                    .join(own_path.trim_start_matches('/'))
                    .join("compose-fleet-lab")
                    .join(host),
            );
        }
    }
    dirs
}

/// Whether `/sys/fs/cgroup` itself is the v2 tree (no v1 hierarchies).
fn pure_cgroup_v2(mountinfo: &str) -> bool {
    cgroup_mounts(mountinfo)
        .iter()
        .any(|m| m.mount_point == "/sys/fs/cgroup" && m.fstype == "cgroup2")
}

/// Creates `dir` and the `compose-fleet-lab` above it; a v1 cpuset cgroup takes no process until
/// it has cpus and mems, so those are copied from the parent.
fn make_cgroup(dir: &Path) -> std::io::Result<()> {
    let Some(lab) = dir.parent() else {
        return Ok(());
    };
    for d in [lab, dir] {
        if !d.is_dir() {
            fs::create_dir(d)?;
        }
        if d.join("cpuset.cpus").exists() {
            let parent = d.parent().unwrap_or(d);
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = fs::read_to_string(parent.join(file))?;
                if fs::read_to_string(d.join(file))?.trim().is_empty() {
                    fs::write(d.join(file), value.trim())?;
                }
            }
        }
        if d == lab && d.join("cgroup.subtree_control").exists() {
            // Pure v2: hand the host every controller the machine root delegates.
            let parent = d.parent().unwrap_or(d);
            let enabled = fs::read_to_string(parent.join("cgroup.subtree_control"))?;
            for c in enabled.split_whitespace() {
                let _ = fs::write(d.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
    }
    Ok(())
}

/// Removes a host's cgroups (see [`cgroup_dirs`]), deepest first, killing what is still in them
/// (every process there belongs to the host).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            sys::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Host {
    /// Host N (from 1) of a lab.
    pub fn new(lab: &Record, index: usize) -> Host {
        let name = lab.host_name(index);
        let ip = std::net::Ipv4Addr::from(lab.host_address(index));
        Host {
            address: ip.to_string(),
            ip,
            root: lab.dir.join("hosts").join(&name),
            name,
            index,
        }
    }

    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, 22))
    }

    /// The host's private directory for `name` (see [`PRIVATE_DIRS`]).
    pub fn private(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// sshd's pid file, as the root namespace sees it (sshd writes `/run/sshd.pid`).
    pub fn pid_file(&self) -> PathBuf {
        self.private("run").join("sshd.pid")
    }

    pub fn host_key(&self) -> PathBuf {
        self.private("etc-ssh").join("ssh_host_ed25519_key")
    }

    /// The running sshd's pid, when its pid file names a live process in the host's namespace.
    pub fn sshd_pid(&self) -> Option<i32> {
        let pid = sys::read_pid(&self.pid_file())?;
        (sys::alive(pid) && same_netns(pid, &self.name)).then_some(pid)
    }

    /// The `known_hosts` line for this host (`ADDRESS ssh-ed25519 AAAA…`).
    pub fn known_hosts_line(&self) -> Result<String, Error> {
        let path = self.host_key().with_extension("pub");
        let text = fs::read_to_string(&path)
            .map_err(|e| Error::Env(format!("cannot read {}: {e}", path.display())))?;
        let mut fields = text.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some(kind), Some(key)) => Ok(format!("{} {kind} {key}", self.address)),
            _ => Err(Error::Env(format!(
                "{} is not a public key",
                path.display()
            ))),
        }
    }

    /// Directories, host key, sshd_config and authorized_keys. Idempotent; keeps an existing key.
    pub fn prepare(&self, authorized_key: &str) -> Result<(), Error> {
        for (name, _) in PRIVATE_DIRS {
            mkdir(
                &self.private(name),
                if name == "tmp" { 0o1777 } else { 0o755 },
            )?;
        }
        if !self.host_key().exists() {
            let key = self.host_key();
            let _ = fs::remove_file(key.with_extension("pub"));
            run(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    &self.name,
                    "-f",
                    &key.to_string_lossy(),
                ],
            )?;
        }
        write(
            &self.private("etc-ssh").join("sshd_config"),
            &self.sshd_config(),
            0o644,
        )?;
        write(
            &self.private("etc-ssh").join("authorized_keys"),
            authorized_key,
            0o644,
        )?;
        Ok(())
    }

    /// Paths are as the host sees them (after its bind mounts).
    fn sshd_config(&self) -> String {
        format!(
            "# lab host {name}: written by `compose-fleet lab up`\n\
             ListenAddress {addr}:22\n\
             HostKey /etc/ssh/ssh_host_ed25519_key\n\
             PidFile /run/sshd.pid\n\
             AuthorizedKeysFile /etc/ssh/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            name = self.name,
            addr = self.address,
        )
    }

    /// Starts sshd detached (`setsid -f`), in the host's network namespace, a new mount and UTS
    /// namespace with the host's bind mounts and hostname. Does not wait for it to answer.
    pub fn start_sshd(&self, lab_dir: &Path) -> Result<(), Error> {
        // The mount point must exist on the machine; the mount itself stays in the host.
        let point = Path::new("/var/lib/compose-fleet");
        if !point.exists() {
            mkdir(point, 0o755)?;
        }
        let _ = fs::remove_file(self.pid_file());
        let script = self.start_script(lab_dir);
        let log = self.root.join("sshd.err");
        let stderr = fs::File::create(&log)
            .map_err(|e| Error::Env(format!("cannot create {}: {e}", log.display())))?;
        // The host's own cgroups: sshd (and so everything it starts) moves in before unsharing the
        // cgroup namespace, whose root they then are. Recorded so that `down` can remove them.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut enter = String::new();
        let mut made = String::new();
        for dir in cgroup_dirs(&mountinfo, &own, &self.name) {
            match make_cgroup(&dir) {
                Ok(()) => {
                    let procs = quote(&dir.join("cgroup.procs").to_string_lossy());
                    enter.push_str(&format!(
                        "echo $$ > {procs} || echo 'lab: cannot enter {}' >&2\n",
                        dir.display()
                    ));
                    made.push_str(&format!("{}\n", dir.display()));
                }
                Err(e) => eprintln!("lab: cannot create cgroup {}: {e}", dir.display()),
            }
        }
        write(&self.cgroups_file(), &made, 0o644)?;
        let inner = [
            "exec ip netns exec",
            &quote(&self.name),
            "unshare --mount --uts --cgroup --propagation private sh -c",
            &quote(&script),
        ]
        .join(" ");
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &format!("{enter}{inner}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status()
            .map_err(|e| Error::Env(format!("cannot run setsid: {e}")))?;
        if !status.success() {
            return Err(Error::Env(format!(
                "starting sshd of {} failed ({status}); see {}",
                self.name,
                log.display()
            )));
        }
        Ok(())
    }

    fn start_script(&self, lab_dir: &Path) -> String {
        // A bind mount over an ancestor of the lab directory (a lab in /tmp) hides the sources of
        // the mounts after it: do that one last.
        let lab_dir = fs::canonicalize(lab_dir).unwrap_or_else(|_| lab_dir.to_path_buf());
        let mut mounts: Vec<(&str, &str)> = PRIVATE_DIRS.to_vec();
        mounts.sort_by_key(|(_, target)| lab_dir.starts_with(target));
        let mut script = format!("set -e\nhostname {}\n", self.name);
        for (name, target) in mounts {
            script.push_str(&format!(
                "mount --bind {} {target}\n",
                quote(&self.private(name).to_string_lossy())
            ));
        }
        // `ip netns exec` mounted a fresh /sys for the namespace, without the machine's cgroup
        // hierarchies under it: mount them again so the agent on a lab host can set limits, as
        // on a real server. A failure is logged and not fatal: sshd must still come up.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        script.push_str(&cgroup_mount_script(&mountinfo));
        if pure_cgroup_v2(&mountinfo) {
            // v2's rule: a cgroup with processes delegates no controllers. The namespace root
            // must delegate them to the agent's cgroups, so sshd moves into a leaf of its own.
            script.push_str(
                "mkdir -p /sys/fs/cgroup/lab-host && echo $$ > /sys/fs/cgroup/lab-host/cgroup.procs \
                 && for c in $(cat /sys/fs/cgroup/cgroup.controllers); do echo +$c > /sys/fs/cgroup/cgroup.subtree_control; done \
                 || echo 'lab: cannot delegate cgroup v2 controllers' >&2\n",
            );
        }
        // sshd's privilege separation directory, in the host's own /run.
        script.push_str("mkdir -p /run/sshd\nchmod 0755 /run/sshd\n");
        script.push_str("exec /usr/sbin/sshd -D -f /etc/ssh/sshd_config -E /run/sshd.log\n");
        script
    }

    /// Stops sshd: the one its pid file names, and any other listening lab sshd in the host's
    /// namespace (one whose pid file was lost with an old lab directory). Sessions and other
    /// processes of the host keep running.
    pub fn stop_sshd(&self) {
        let mut pids: Vec<i32> = net::netns_pids(&self.name)
            .into_iter()
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(SSHD_LISTENER)
                })
            })
            .collect();
        if let Some(pid) = sys::read_pid(&self.pid_file()) {
            if same_netns(pid, &self.name) {
                pids.push(pid);
            }
        }
        sys::terminate(&pids);
    }

    /// Where [`Host::start_sshd`] records the host's cgroups, as the machine sees them.
    fn cgroups_file(&self) -> PathBuf {
        self.root.join("cgroups")
    }

    /// Removes the host's cgroups once its processes are gone (a process that is still exiting
    /// keeps its cgroup busy for a moment).
    pub fn remove_cgroups(&self) {
        let Ok(text) = fs::read_to_string(self.cgroups_file()) else {
            return;
        };
        let dirs: Vec<PathBuf> = text.lines().map(PathBuf::from).collect();
        for _ in 0..50 {
            for dir in &dirs {
                remove_cgroup_tree(dir);
            }
            if dirs.iter().all(|d| !d.exists()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = fs::remove_file(self.cgroups_file());
    }

    /// Every process of the host: those in its network namespace and their descendants.
    pub fn processes(&self) -> Vec<i32> {
        let roots = net::netns_pids(&self.name);
        with_descendants(&roots)
    }
}

/// Whether `pid` lives in the named network namespace.
fn same_netns(pid: i32, netns: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ours = fs::metadata(Path::new("/run/netns").join(netns)).map(|m| (m.dev(), m.ino()));
    let theirs = fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| (m.dev(), m.ino()));
    match (ours, theirs) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `roots` plus every process whose parent chain reaches one of them.
pub fn with_descendants(roots: &[i32]) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut all: Vec<i32> = roots.to_vec();
    loop {
        let before = all.len();
        for (pid, ppid) in &parent_of {
            if all.contains(ppid) && !all.contains(pid) {
                all.push(*pid);
            }
        }
        if all.len() == before {
            break;
        }
    }
    all.sort_unstable();
    all.dedup();
    all.retain(|p| *p > 1);
    all
}

/// Quotes a string for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn mkdir(path: &Path, mode: u32) -> Result<(), Error> {
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| Error::Env(format!("cannot create directory {}: {e}", path.display())))
}

/// Writes a file (replacing it) with the given mode.
pub fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    fs::write(path, text)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| Error::Env(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-site lab `lab` in `dir`.
    fn record(dir: &str) -> Record {
        Record {
            name: "lab".into(),
            dir: PathBuf::from(dir),
            base: 0,
            sites: 1,
            hosts: 2,
        }
    }

    /// The mount lines of a host's start script, in order.
    fn mount_targets(lab_dir: &str) -> Vec<String> {
        let host = Host::new(&record(lab_dir), 1);
        host.start_script(Path::new(lab_dir))
            .lines()
            .filter(|l| l.starts_with("mount --bind"))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn the_mount_over_the_lab_directory_comes_last() {
        // A lab in /tmp (the test fixture's): mounting the host's /tmp first would hide the
        // sources of the other mounts.
        let targets = mount_targets("/tmp/no-such-lab-dir");
        assert_eq!(targets.last().map(String::as_str), Some("/tmp"));
        assert_eq!(targets.len(), PRIVATE_DIRS.len());
        let targets = mount_targets("/run/no-such-lab-dir");
        assert_eq!(targets.last().map(String::as_str), Some("/run"));
        // Elsewhere (the default directory is not inside /var/lib/compose-fleet), declared order.
        let declared: Vec<&str> = PRIVATE_DIRS.iter().map(|(_, t)| *t).collect();
        assert_eq!(mount_targets(super::super::DEFAULT_DIR), declared);
        assert_eq!(mount_targets("/var/lib/no-such-lab-dir"), declared);
    }

    #[test]
    fn start_script_quotes_paths_and_execs_the_listener_it_looks_for() {
        let host = Host::new(&record("/srv/it's a lab"), 2);
        let script = host.start_script(Path::new("/srv/it's a lab"));
        assert!(script.starts_with("set -e\nhostname lab-2\n"));
        assert!(script.contains(
            "mount --bind '/srv/it'\\''s a lab/hosts/lab-2/state' /var/lib/compose-fleet\n"
        ));
        assert!(script.contains(&format!("exec {SSHD_LISTENER} ")));
        assert_eq!(host.address, "10.250.0.12");
        assert_eq!(host.ssh_addr().to_string(), "10.250.0.12:22");
    }

    #[test]
    fn each_host_gets_its_own_cgroup_under_ours_in_every_hierarchy() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /proc rw - proc proc rw";
        let own = "9:name=systemd:/\n2:cpuacct,cpu:/\n4:memory:/sandbox/x\n0::/user.slice\n";
        assert_eq!(
            cgroup_dirs(mountinfo, own, "lab1-h1"),
            [
                "/sys/fs/cgroup/cpu,cpuacct/compose-fleet-lab/lab1-h1",
                "/sys/fs/cgroup/memory/sandbox/x/compose-fleet-lab/lab1-h1",
                "/sys/fs/cgroup/unified/user.slice/compose-fleet-lab/lab1-h1",
            ]
            .map(PathBuf::from)
        );
        assert!(!pure_cgroup_v2(mountinfo));
        // Pure v2: under the machine root, whatever our own cgroup.
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            cgroup_dirs(v2, "0::/user.slice/session-1.scope\n", "h"),
            [PathBuf::from("/sys/fs/cgroup/compose-fleet-lab/h")]
        );
        assert!(pure_cgroup_v2(v2));
    }

    #[test]
    fn cgroup_hierarchies_of_the_machine_are_mounted_again_in_a_host() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 0:20 / /proc rw,nosuid - proc proc rw
";
        let script = cgroup_mount_script(mountinfo);
        let commands: Vec<&str> = script
            .lines()
            .map(|l| l.split("; ").nth(1).unwrap_or_default())
            .map(|l| l.split(" || ").next().unwrap_or_default())
            .collect();
        assert_eq!(
            commands,
            [
                "mount -t tmpfs -o mode=755 cgroup_root '/sys/fs/cgroup'",
                "mount -t cgroup -o cpu,cpuacct cgroup '/sys/fs/cgroup/cpu,cpuacct'",
                "mount -t cgroup -o memory cgroup '/sys/fs/cgroup/memory'",
                "mount -t cgroup2 cgroup2 '/sys/fs/cgroup/unified'",
            ]
        );
        assert_eq!(
            cgroup_mount_script("25 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
                .split("; ")
                .nth(1)
                .and_then(|l| l.split(" || ").next()),
            Some("mount -t cgroup2 cgroup2 '/sys/fs/cgroup'")
        );
    }
}
