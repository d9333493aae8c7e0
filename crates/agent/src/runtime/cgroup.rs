//! Cgroups, v1 and v2, behind one small trait: memory (with swap equal to memory, so that an
//! over-limit process is OOM-killed rather than swapped), cpu quota, pids; membership; OOM kill
//! counts; removal.
//!
//! Detection: v2 when `/sys/fs/cgroup/cgroup.controllers` exists and lists controllers; otherwise
//! v1, with each controller's mount point read from `/proc/self/mountinfo` (controllers may be
//! co-mounted, e.g. `cpu,cpuacct`).

use std::path::{Path, PathBuf};

use super::error::{Context, Error, Result};
use super::kernel::Kernel;
use crate::proto::ResourceLimits;

/// The period of the cpu quota, as Docker uses.
pub const CPU_PERIOD_US: u64 = 100_000;

/// One cgroup hierarchy's way of doing things.
pub trait Cgroups {
    /// `v1` or `v2`.
    fn version(&self) -> &'static str;
    /// Creates the cgroup `path` (e.g. `compose-fleet/proj/pod/web`) and writes its limits.
    fn create(&self, k: &mut dyn Kernel, path: &str, limits: &ResourceLimits) -> Result<()>;
    /// Moves a process into the cgroup.
    fn join(&self, k: &mut dyn Kernel, path: &str, pid: i32) -> Result<()>;
    /// Processes in the cgroup.
    fn pids(&self, k: &mut dyn Kernel, path: &str) -> Result<Vec<i32>>;
    /// How many times the kernel's OOM killer killed a process of this cgroup.
    fn oom_kills(&self, k: &mut dyn Kernel, path: &str) -> Result<u64>;
    /// Removes the cgroup (it must be empty). Parents stay (the next container of the pod
    /// reuses them): remove those with [`Cgroups::remove_empty`].
    fn remove(&self, k: &mut dyn Kernel, path: &str) -> Result<()>;
    /// Removes `path` and its ancestors while they are empty (pod and project removal).
    fn remove_empty(&self, k: &mut dyn Kernel, path: &str);
}

/// Chooses v1 or v2 for this host.
pub fn detect(k: &mut dyn Kernel) -> Result<Box<dyn Cgroups + Send + Sync>> {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(c) = k.read_file(&root.join("cgroup.controllers")) {
        if !c.trim().is_empty() {
            return Ok(Box::new(V2 { root: root.into() }));
        }
    }
    let mountinfo = k
        .read_file(Path::new("/proc/self/mountinfo"))
        .context("reading /proc/self/mountinfo to find cgroup v1 controllers")?;
    let find = |name: &str| v1_mount_point(&mountinfo, name);
    match (find("memory"), find("cpu"), find("pids")) {
        (Some(memory), Some(cpu), Some(pids)) => Ok(Box::new(V1 { memory, cpu, pids })),
        _ => Err(Error::new(
            "no usable cgroup hierarchy: need cgroup v2 with controllers at /sys/fs/cgroup, or cgroup v1 with memory, cpu and pids controllers mounted",
        )),
    }
}

/// The mount point of a v1 controller in mountinfo text.
pub fn v1_mount_point(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent maj:min root mountpoint opts... - fstype source superopts`
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let superopts = r.nth(1)?;
        let mount_point = left.split_whitespace().nth(4)?;
        superopts
            .split(',')
            .any(|o| o == controller)
            .then(|| PathBuf::from(mount_point))
    })
}

fn write(k: &mut dyn Kernel, file: PathBuf, value: &str) -> Result<()> {
    k.write_file(&file, value)
        .with_context(|| format!("writing {value:?} to {}", file.display()))
}

fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// A `key value` line's value from a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes `root/path`. It may take a moment to become removable after its last process died.
fn remove_leaf(k: &mut dyn Kernel, root: &Path, path: &str) -> Result<()> {
    let leaf = root.join(path);
    if !k.exists(&leaf) {
        return Ok(());
    }
    let mut attempts = 0;
    loop {
        match k.rmdir(&leaf) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 200 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", leaf.display())),
        }
    }
    Ok(())
}

/// Removes `root/path` and its ancestors (below `root`) while they are empty.
fn remove_chain(k: &mut dyn Kernel, root: &Path, path: &str) {
    let mut p = Some(Path::new(path));
    while let Some(dir) = p.filter(|p| !p.as_os_str().is_empty()) {
        if k.rmdir(&root.join(dir)).is_err() {
            break; // Not empty (or gone): another container or pod still uses it.
        }
        p = dir.parent();
    }
}

/// cgroup v1: one directory per controller.
#[derive(Debug)]
pub struct V1 {
    pub memory: PathBuf,
    pub cpu: PathBuf,
    pub pids: PathBuf,
}

impl V1 {
    fn roots(&self) -> [&Path; 3] {
        [&self.memory, &self.cpu, &self.pids]
    }
}

impl Cgroups for V1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn create(&self, k: &mut dyn Kernel, path: &str, limits: &ResourceLimits) -> Result<()> {
        for root in self.roots() {
            let dir = root.join(path);
            k.mkdir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        if let Some(mem) = limits.memory {
            let dir = self.memory.join(path);
            write(k, dir.join("memory.limit_in_bytes"), &mem.to_string())?;
            // memory+swap = memory: no swap, so exceeding the limit OOM-kills. The file is
            // missing when swap accounting is off (then there is no swap to account for).
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if k.exists(&memsw) {
                write(k, memsw, &mem.to_string())?;
            }
        }
        if let Some(cpus) = limits.cpus {
            let dir = self.cpu.join(path);
            write(k, dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(
                k,
                dir.join("cpu.cfs_quota_us"),
                &cpu_quota(cpus).to_string(),
            )?;
        }
        if let Some(pids) = limits.pids.filter(|p| *p > 0) {
            write(k, self.pids.join(path).join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    fn join(&self, k: &mut dyn Kernel, path: &str, pid: i32) -> Result<()> {
        for root in self.roots() {
            write(k, root.join(path).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn pids(&self, k: &mut dyn Kernel, path: &str) -> Result<Vec<i32>> {
        let file = self.pids.join(path).join("cgroup.procs");
        let text = k
            .read_file(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(parse_pids(&text))
    }

    fn oom_kills(&self, k: &mut dyn Kernel, path: &str) -> Result<u64> {
        let file = self.memory.join(path).join("memory.oom_control");
        let text = k
            .read_file(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(keyed(&text, "oom_kill").unwrap_or(0))
    }

    fn remove(&self, k: &mut dyn Kernel, path: &str) -> Result<()> {
        for root in self.roots() {
            remove_leaf(k, root, path)?;
        }
        Ok(())
    }

    fn remove_empty(&self, k: &mut dyn Kernel, path: &str) {
        for root in self.roots() {
            remove_chain(k, root, path);
        }
    }
}

/// cgroup v2: one unified tree; controllers enabled down the path via `cgroup.subtree_control`.
#[derive(Debug)]
pub struct V2 {
    pub root: PathBuf,
}

impl Cgroups for V2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn create(&self, k: &mut dyn Kernel, path: &str, limits: &ResourceLimits) -> Result<()> {
        let dir = self.root.join(path);
        k.mkdir_all(&dir)
            .with_context(|| format!("creating cgroup {}", dir.display()))?;
        // Enable the controllers in every ancestor so the leaf gets their files.
        let mut at = self.root.clone();
        for part in Path::new(path).iter() {
            write(k, at.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
            at = at.join(part);
        }
        if let Some(mem) = limits.memory {
            write(k, dir.join("memory.max"), &mem.to_string())?;
            let swap = dir.join("memory.swap.max");
            if k.exists(&swap) {
                write(k, swap, "0")?;
            }
        }
        if let Some(cpus) = limits.cpus {
            write(
                k,
                dir.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", cpu_quota(cpus)),
            )?;
        }
        if let Some(pids) = limits.pids.filter(|p| *p > 0) {
            write(k, dir.join("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    fn join(&self, k: &mut dyn Kernel, path: &str, pid: i32) -> Result<()> {
        write(
            k,
            self.root.join(path).join("cgroup.procs"),
            &pid.to_string(),
        )
    }

    fn pids(&self, k: &mut dyn Kernel, path: &str) -> Result<Vec<i32>> {
        let file = self.root.join(path).join("cgroup.procs");
        let text = k
            .read_file(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(parse_pids(&text))
    }

    fn oom_kills(&self, k: &mut dyn Kernel, path: &str) -> Result<u64> {
        let file = self.root.join(path).join("memory.events");
        let text = k
            .read_file(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(keyed(&text, "oom_kill").unwrap_or(0))
    }

    fn remove(&self, k: &mut dyn Kernel, path: &str) -> Result<()> {
        remove_leaf(k, &self.root, path)
    }

    fn remove_empty(&self, k: &mut dyn Kernel, path: &str) {
        remove_chain(k, &self.root, path)
    }
}

/// The quota for `cpus` CPUs over [`CPU_PERIOD_US`], at least the kernel's 1 ms minimum.
pub fn cpu_quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kernel::Recording;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
38 30 0:34 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
";

    fn limits() -> ResourceLimits {
        ResourceLimits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(100),
        }
    }

    #[test]
    fn v1_is_detected_from_mountinfo_when_v2_has_no_controllers() {
        let mut k = Recording::default();
        k.files
            .insert("/sys/fs/cgroup/cgroup.controllers".into(), "\n".into());
        k.files
            .insert("/proc/self/mountinfo".into(), MOUNTINFO.into());
        let cg = detect(&mut k).unwrap();
        assert_eq!(cg.version(), "v1");
        assert_eq!(
            v1_mount_point(MOUNTINFO, "cpu"),
            Some("/sys/fs/cgroup/cpu,cpuacct".into())
        );
        k.files.insert(
            "/sys/fs/cgroup/cgroup.controllers".into(),
            "cpu memory pids\n".into(),
        );
        assert_eq!(detect(&mut k).unwrap().version(), "v2");
    }

    #[test]
    fn v1_writes_memory_and_swap_equal_then_cpu_and_pids() {
        let mut k = Recording::default();
        k.existing
            .insert("/m/compose-fleet/p/pod/web/memory.memsw.limit_in_bytes".into());
        let v1 = V1 {
            memory: "/m".into(),
            cpu: "/c".into(),
            pids: "/p".into(),
        };
        v1.create(&mut k, "compose-fleet/p/pod/web", &limits())
            .unwrap();
        assert_eq!(
            k.calls,
            [
                "mkdir /m/compose-fleet/p/pod/web",
                "mkdir /c/compose-fleet/p/pod/web",
                "mkdir /p/compose-fleet/p/pod/web",
                "write /m/compose-fleet/p/pod/web/memory.limit_in_bytes 67108864",
                "write /m/compose-fleet/p/pod/web/memory.memsw.limit_in_bytes 67108864",
                "write /c/compose-fleet/p/pod/web/cpu.cfs_period_us 100000",
                "write /c/compose-fleet/p/pod/web/cpu.cfs_quota_us 50000",
                "write /p/compose-fleet/p/pod/web/pids.max 100",
            ]
        );
    }

    #[test]
    fn v2_enables_controllers_down_the_path_and_disables_swap() {
        let mut k = Recording::default();
        k.existing.insert("/cg/a/b/memory.swap.max".into());
        let v2 = V2 { root: "/cg".into() };
        v2.create(&mut k, "a/b", &limits()).unwrap();
        assert_eq!(
            k.calls,
            [
                "mkdir /cg/a/b",
                "write /cg/cgroup.subtree_control +memory +cpu +pids",
                "write /cg/a/cgroup.subtree_control +memory +cpu +pids",
                "write /cg/a/b/memory.max 67108864",
                "write /cg/a/b/memory.swap.max 0",
                "write /cg/a/b/cpu.max 50000 100000",
                "write /cg/a/b/pids.max 100",
            ]
        );
    }

    #[test]
    fn oom_kills_are_read_from_either_version() {
        let mut k = Recording::default();
        k.files.insert(
            "/m/x/memory.oom_control".into(),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into(),
        );
        k.files.insert(
            "/cg/x/memory.events".into(),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n".into(),
        );
        let v1 = V1 {
            memory: "/m".into(),
            cpu: "/c".into(),
            pids: "/p".into(),
        };
        assert_eq!(v1.oom_kills(&mut k, "x").unwrap(), 2);
        assert_eq!(V2 { root: "/cg".into() }.oom_kills(&mut k, "x").unwrap(), 1);
    }
}
