//! Host facts reported in the `Hello` handshake: what the host is (arch, cpus, memory, kernel,
//! cgroup version, hostname, free disk), read from the kernel each time it is asked.

use std::path::Path;

use crate::proto::{HostFacts, PROTOCOL_VERSION};

/// Collects this host's facts. `state_dir` is where free disk is measured (the filesystem that
/// will hold images and volumes); missing or unreadable sources give zero/`unknown`, never fail.
pub fn collect(state_dir: &Path) -> HostFacts {
    HostFacts {
        protocol_version: PROTOCOL_VERSION,
        agent_version: crate::AGENT_VERSION.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: cpus(),
        memory: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_total(&s))
            .unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        cgroup: cgroup_version(
            Path::new("/sys/fs/cgroup"),
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        )
        .to_string(),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into()),
        free_disk: free_disk(state_dir),
        pod_subnet: crate::network::recorded_subnet(state_dir),
        mesh: crate::network::mesh::facts(state_dir),
        fast_path: crate::network::fastpath::status(),
        capabilities: vec![crate::proto::CAPABILITY_WATCH.to_string()],
    }
}

/// CPUs this process may run on (what a container could use), not the machine's total.
fn cpus() -> u32 {
    use nix::sched::{sched_getaffinity, CpuSet};
    if let Ok(set) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        let n = (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .count();
        if n > 0 {
            return n as u32;
        }
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count() as u32)
        .unwrap_or(0)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `v2` only when the unified hierarchy is mounted at `root` *and* has controllers: hosts in hybrid
/// mode have an empty v2 mount (`/sys/fs/cgroup/unified`) beside the v1 controllers. When nothing
/// is mounted at `root` (a fresh sysfs in a network namespace), the kernel's view of this process
/// (`/proc/self/cgroup`) decides: a v1 hierarchy lists its controllers, v2 is the single `0::` line.
pub fn cgroup_version(root: &Path, proc_self_cgroup: &str) -> &'static str {
    match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(s) if !s.trim().is_empty() => return "v2",
        _ if root.join("memory").is_dir() || root.join("cpu").is_dir() => return "v1",
        _ => {}
    }
    let mut v2 = false;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers)) = (fields.next(), fields.next()) else {
            continue;
        };
        if id != "0"
            && controllers
                .split(',')
                .any(|c| !c.is_empty() && !c.starts_with("name="))
        {
            return "v1";
        }
        v2 |= id == "0" && controllers.is_empty();
    }
    if v2 {
        "v2"
    } else {
        "none"
    }
}

/// Free bytes (for unprivileged use) on the filesystem holding `dir`, or its nearest existing
/// ancestor (the state dir may not exist before the first deploy).
fn free_disk(dir: &Path) -> u64 {
    let mut dir = Some(dir);
    while let Some(d) = dir {
        if let Ok(st) = nix::sys::statvfs::statvfs(d) {
            #[allow(clippy::unnecessary_cast)] // the field types differ between libcs
            return st.blocks_available() as u64 * st.fragment_size() as u64;
        }
        dir = d.parent();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let meminfo = "MemTotal:       24551236 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24551236 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn hybrid_cgroup_with_empty_unified_mount_is_v1() {
        let dir = std::env::temp_dir().join(format!("cf-cgroup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("memory")).expect("mkdir");
        assert_eq!(cgroup_version(&dir, ""), "v1");
        std::fs::write(dir.join("cgroup.controllers"), "").expect("write");
        assert_eq!(cgroup_version(&dir, ""), "v1");
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").expect("write");
        assert_eq!(cgroup_version(&dir, ""), "v2");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_cgroup_mount_the_process_view_decides() {
        let nothing = Path::new("/nonexistent-cgroup-root");
        let v1 =
            "12:memory:/user.slice\n4:cpu,cpuacct:/\n1:name=systemd:/init.scope\n0::/init.scope\n";
        assert_eq!(cgroup_version(nothing, v1), "v1");
        assert_eq!(
            cgroup_version(nothing, "0::/user.slice/session-1.scope\n"),
            "v2"
        );
        assert_eq!(cgroup_version(nothing, ""), "none");
    }

    #[test]
    fn this_host_has_facts() {
        let facts = collect(Path::new("/tmp"));
        assert!(facts.cpus >= 1);
        assert!(facts.memory > 0);
        assert!(!facts.kernel.is_empty() && facts.kernel != "unknown");
        assert!(facts.free_disk > 0);
    }
}
