//! The container runtime on the real kernel (needs root): isolation seen from inside a busybox
//! container, pod networking over 127.0.0.1, cgroup limits, read-only rootfs, symlink-safe
//! mounts, exec, errors travelling back from init; plus a `crun` comparison benchmark (ignored).
//!
//! Every kernel object is named `cfrt-<pid>-...` and removed by `Fixture`'s `Drop`, even when an
//! assertion fails.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use compose_fleet_agent::proto::{ContainerSpec, Mount, ResourceLimits};
use compose_fleet_agent::runtime::{ContainerConfig, ExecProcess, ImageConfig, Runtime, Stdio};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// The agent binary used as the containers' init; `CFRT_AGENT` picks another build (e.g. the
/// static musl one).
fn agent() -> PathBuf {
    std::env::var_os("CFRT_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_compose-fleet-agent")))
}

fn is_root(test: &str) -> bool {
    support::is_root(test, "namespaces, mounts, cgroups")
}

/// A busybox-static rootfs as one image layer, in `dir`.
fn busybox_layer(dir: &Path) {
    {
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list-full")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = dir.join(applet);
            if link.exists() || applet == "bin/busybox" {
                continue;
            }
            let _ = symlink("/bin/busybox", &link);
        }
        fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One test's runtime, state dir and kernel objects; cleans everything up on drop.
struct Fixture {
    rt: Runtime,
    state: PathBuf,
    project: String,
    pods: Mutex<Vec<String>>,
    containers: Mutex<Vec<ContainerConfig>>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let project = format!("cfrt-{}-{n}", std::process::id());
        let state = PathBuf::from(format!("/tmp/{project}-{name}"));
        fs::create_dir_all(&state).unwrap();
        busybox_layer(&state.join("layer"));
        let rt = Runtime::new(&state).unwrap().with_init_exe(agent());
        Fixture {
            rt,
            state,
            project,
            pods: Mutex::new(Vec::new()),
            containers: Mutex::new(Vec::new()),
        }
    }

    fn pod(&self, pod: &str) {
        self.rt.create_pod(&self.project, pod, pod).unwrap();
        self.pods.lock().unwrap().push(pod.into());
    }

    fn config(&self, pod: &str, spec: &ContainerSpec) -> ContainerConfig {
        let image = ImageConfig {
            cmd: Some(vec!["sh".into()]),
            layers: vec![self.state.join("layer")],
            ..Default::default()
        };
        let volumes = self.rt.volumes_dir(&self.project);
        let at = self
            .rt
            .placement(&self.project, pod, pod, &spec.service, &volumes);
        ContainerConfig::build(spec, &image, at).unwrap()
    }

    fn create(&self, pod: &str, spec: &ContainerSpec) -> ContainerConfig {
        let cfg = self.config(pod, spec);
        self.containers.lock().unwrap().push(cfg.clone());
        self.rt.create(&cfg).unwrap();
        cfg
    }

    /// Starts with stdout+stderr on a pipe; returns the pid and the pipe's read end.
    fn start(&self, cfg: &ContainerConfig) -> (Pid, fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let w2 = w.try_clone().unwrap();
        let pid = self
            .rt
            .start(
                cfg,
                Stdio {
                    stdin: None,
                    stdout: Some(w),
                    stderr: Some(w2),
                },
            )
            .unwrap();
        (pid, fs::File::from(r))
    }

    /// Runs a container to completion: its output and how it ended.
    fn run(&self, pod: &str, spec: &ContainerSpec) -> (String, WaitStatus, ContainerConfig) {
        let cfg = self.create(pod, spec);
        let (pid, mut out) = self.start(&cfg);
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        let status = waitpid(pid, None).unwrap();
        (text, status, cfg)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in self.containers.lock().unwrap().iter() {
            if let Err(e) = self.rt.delete(c) {
                eprintln!("cleanup: {e}");
            }
        }
        for p in self.pods.lock().unwrap().iter() {
            if let Err(e) = self.rt.remove_pod(&self.project, p) {
                eprintln!("cleanup: {e}");
            }
        }
        // `delete` finishes removing directories on background threads: retry briefly.
        for _ in 0..50 {
            if fs::remove_dir_all(&self.state).is_ok() || !self.state.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn sh(service: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        service: service.into(),
        replica: 1,
        image: "busybox".into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn facts(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn isolation_probe_sees_its_own_pid_1_hostname_caps_seccomp_and_no_host() {
    if !is_root("isolation_probe_sees_its_own_pid_1_hostname_caps_seccomp_and_no_host") {
        return;
    }
    let fx = Fixture::new("probe");
    fx.pod("probe");
    let host_file = fx.state.join("host-only-file");
    fs::write(&host_file, "secret").unwrap();
    let shared = fx.state.join("shared");
    fs::create_dir_all(shared.join("sub")).unwrap();
    fs::write(shared.join("sub/under"), "").unwrap();
    let mut spec = sh(
        "probe",
        &format!(
            r#"echo "cmdline=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "self=$$"
echo "hostname=$(hostname)"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "hostfile=$(test -e {hf} && echo visible || echo absent)"
grep -E '^(CapEff|CapBnd|CapPrm|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status | tr ':' '='
echo "devnull=$(echo x > /dev/null && echo ok)"
echo "keys=$(wc -c < /proc/keys)"
echo "mknod=$(mknod /tmp/cfrt-null c 1 3 && echo x > /tmp/cfrt-null 2>/dev/null && echo opened || echo blocked)"
echo "sysro=$(touch /sys/x 2>/dev/null && echo rw || echo ro)"
echo "mount=$(mount -t tmpfs none /mnt 2>/dev/null && echo allowed || echo denied)"
echo "userns=$(unshare -U true 2>/dev/null && echo allowed || echo denied)"
i=0; while [ ! -e /shared/go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
echo "hostsubmount=$(test -e /shared/sub/under && echo invisible || echo visible)"
"#,
            hf = host_file.display()
        ),
    );
    spec.mounts.push(Mount::Bind {
        source: shared.display().to_string(),
        target: "/shared".into(),
        read_only: false,
    });
    let cfg = fx.create("probe", &spec);
    let (pid, mut out) = fx.start(&cfg);

    // A mount made inside (the rootfs overlay, /proc, ...) is invisible outside.
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(&cfg.dir.join("rootfs").display().to_string()),
        "the container's rootfs mount leaked to the host"
    );
    // A mount made outside after start is invisible inside (private propagation).
    nix::mount::mount(
        Some("tmpfs"),
        &shared.join("sub"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    fs::write(shared.join("go"), "").unwrap();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let _ = nix::mount::umount2(&shared.join("sub"), nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(
        waitpid(pid, None).unwrap(),
        WaitStatus::Exited(pid, 0),
        "{text}"
    );

    let f = facts(&text);
    let script_start = "sh -c echo";
    assert!(f["cmdline"].starts_with(script_start), "{text}");
    assert_eq!(f["self"], "1", "{text}");
    assert_eq!(f["hostname"], "probe", "{text}");
    let procs: u32 = f["procs"].parse().unwrap();
    assert!(procs <= 4, "the host's processes are visible: {text}");
    assert_eq!(f["hostfile"], "absent", "{text}");
    assert_eq!(f["CapEff"], "00000000a80425fb", "{text}");
    assert_eq!(f["CapBnd"], "00000000a80425fb", "{text}");
    assert_eq!(f["CapAmb"], "0000000000000000", "{text}");
    assert_eq!(f["Seccomp"], "2", "{text}");
    assert_eq!(f["NoNewPrivs"], "1", "{text}");
    assert_eq!(f["devnull"], "ok", "{text}");
    assert_eq!(f["keys"], "0", "/proc/keys is not masked: {text}");
    assert_eq!(f["sysro"], "ro", "{text}");
    assert_eq!(
        f["mknod"], "blocked",
        "a node made with CAP_MKNOD opened: {text}"
    );
    assert_eq!(f["mount"], "denied", "{text}");
    // No capability is needed for a user namespace: only the seccomp filter stops it.
    assert_eq!(f["userns"], "denied", "{text}");
    assert_eq!(f["hostsubmount"], "invisible", "{text}");
}

#[test]
fn containers_of_a_pod_talk_over_localhost_and_pods_have_separate_netns() {
    if !is_root("containers_of_a_pod_talk_over_localhost_and_pods_have_separate_netns") {
        return;
    }
    let fx = Fixture::new("pods");
    fx.pod("a");
    fx.pod("b");
    let server = fx.create(
        "a",
        // Listens again until the message arrives: under a loaded test run busybox nc was seen
        // (about 1 run in 6) to accept a connection and print nothing.
        &sh(
            "server",
            "until nc -l -p 7777 | grep hello-from-client; do :; done; readlink /proc/self/ns/net",
        ),
    );
    let (spid, mut sout) = fx.start(&server);
    let client = sh(
        "client",
        // Sends until the server, having got the message, stops listening (refused 20 times in a
        // row after a success).
        "ok=0; refused=0; i=0; while [ $i -lt 400 ]; do \
         if echo hello-from-client | nc 127.0.0.1 7777; then ok=1; refused=0; \
         else refused=$((refused+1)); [ $ok = 1 ] && [ $refused -ge 20 ] && exit 0; fi; \
         i=$((i+1)); sleep 0.05; done; exit 1",
    );
    let (cout, cstatus, _) = fx.run("a", &client);
    assert!(matches!(cstatus, WaitStatus::Exited(_, 0)), "{cout}");
    let mut server_out = String::new();
    sout.read_to_string(&mut server_out).unwrap();
    assert!(matches!(
        waitpid(spid, None).unwrap(),
        WaitStatus::Exited(_, 0)
    ));
    assert!(server_out.contains("hello-from-client"), "{server_out}");
    let netns_a = server_out.lines().last().unwrap().to_string();

    let (bout, _, _) = fx.run("b", &sh("other", "readlink /proc/self/ns/net"));
    assert!(netns_a.starts_with("net:["), "{netns_a}");
    assert_ne!(netns_a, bout.trim(), "two pods share a network namespace");
    let host = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(netns_a, host.display().to_string());
}

#[test]
fn memory_limit_oom_kills_and_is_recorded() {
    if !is_root("memory_limit_oom_kills_and_is_recorded") {
        return;
    }
    let fx = Fixture::new("oom");
    fx.pod("oom");
    let mut spec = sh("hog", "exec dd if=/dev/zero of=/dev/null bs=128M count=1");
    spec.resources = ResourceLimits {
        memory: Some(32 << 20),
        ..Default::default()
    };
    let (out, status, cfg) = fx.run("oom", &spec);
    assert!(
        matches!(
            status,
            WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "{status:?} {out}"
    );
    assert!(fx.rt.oom_kills(&cfg).unwrap() >= 1);
}

#[test]
fn cpu_quota_and_pids_limit_are_in_the_cgroup_and_pids_is_enforced() {
    if !is_root("cpu_quota_and_pids_limit_are_in_the_cgroup_and_pids_is_enforced") {
        return;
    }
    let fx = Fixture::new("limits");
    fx.pod("lim");
    let mut spec = sh(
        "limited",
        "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait",
    );
    spec.resources = ResourceLimits {
        memory: None,
        cpus: Some(0.5),
        pids: Some(4),
    };
    let cfg = fx.create("lim", &spec);
    let path = cfg.cgroup_path();
    let (quota, pids) = if fx.rt.cgroup_version() == "v1" {
        (
            fs::read_to_string(format!("/sys/fs/cgroup/cpu/{path}/cpu.cfs_quota_us")).unwrap(),
            fs::read_to_string(format!("/sys/fs/cgroup/pids/{path}/pids.max")).unwrap(),
        )
    } else {
        (
            fs::read_to_string(format!("/sys/fs/cgroup/{path}/cpu.max")).unwrap(),
            fs::read_to_string(format!("/sys/fs/cgroup/{path}/pids.max")).unwrap(),
        )
    };
    assert!(
        quota.trim() == "50000" || quota.trim() == "50000 100000",
        "{quota}"
    );
    assert_eq!(pids.trim(), "4");
    // The limit is enforced: the shell cannot fork eight sleeps with four pids.
    let (pid, mut out) = fx.start(&cfg);
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    let _ = waitpid(pid, None).unwrap();
    assert!(text.contains("can't fork"), "{text}");
}

#[test]
fn read_only_rootfs_is_unwritable_but_tmpfs_and_volumes_are() {
    if !is_root("read_only_rootfs_is_unwritable_but_tmpfs_and_volumes_are") {
        return;
    }
    let fx = Fixture::new("ro");
    fx.pod("ro");
    let mut spec = sh(
        "ro",
        "touch /x 2>/dev/null && echo root=rw || echo root=ro; touch /scratch/x && echo tmpfs=rw; echo data > /data/f && echo volume=rw",
    );
    spec.read_only = true;
    spec.mounts = vec![
        Mount::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
        },
        Mount::Volume {
            name: "data".into(),
            target: "/data".into(),
            read_only: false,
        },
    ];
    let (out, status, _) = fx.run("ro", &spec);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{out}");
    let f = facts(&out);
    assert_eq!(f["root"], "ro", "{out}");
    assert_eq!(f["tmpfs"], "rw", "{out}");
    assert_eq!(f["volume"], "rw", "{out}");
    let vol = fx.rt.volumes_dir(&fx.project).join("data/f");
    assert_eq!(fs::read_to_string(vol).unwrap(), "data\n");
}

#[test]
fn a_restarted_container_keeps_its_filesystem() {
    if !is_root("a_restarted_container_keeps_its_filesystem") {
        return;
    }
    let fx = Fixture::new("restart");
    fx.pod("rs");
    let spec = sh(
        "counter",
        "n=$(cat /count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /count; echo run=$n",
    );
    let cfg = fx.create("rs", &spec);
    for expected in ["1", "2", "3"] {
        let (pid, mut out) = fx.start(&cfg);
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(
            waitpid(pid, None).unwrap(),
            WaitStatus::Exited(pid, 0),
            "{text}"
        );
        assert_eq!(facts(&text)["run"], expected, "{text}");
    }
}

#[test]
fn a_symlink_in_the_image_cannot_move_a_mount_outside_the_rootfs() {
    if !is_root("a_symlink_in_the_image_cannot_move_a_mount_outside_the_rootfs") {
        return;
    }
    let fx = Fixture::new("escape");
    fx.pod("esc");
    // An image whose /evil points at a host directory (absolute), above its busybox layer.
    let outside = fx.state.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let evil_layer = fx.state.join("evil-layer");
    fs::create_dir_all(&evil_layer).unwrap();
    symlink(&outside, evil_layer.join("evil")).unwrap();
    symlink("../../../../../../..", evil_layer.join("up")).unwrap();
    let mut spec = sh(
        "esc",
        "echo inside > /evil/marker && echo marker=written; touch /up/cfrt-upmnt/up-marker && echo up=written",
    );
    spec.mounts = vec![
        Mount::Tmpfs {
            target: "/evil".into(),
            size: None,
        },
        Mount::Tmpfs {
            target: "/up/cfrt-upmnt".into(),
            size: None,
        },
    ];
    let mut cfg = fx.config("esc", &spec);
    cfg.layers.push(evil_layer.clone());
    fx.containers.lock().unwrap().push(cfg.clone());
    fx.rt.create(&cfg).unwrap();
    let (pid, mut out) = fx.start(&cfg);
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    assert!(
        matches!(waitpid(pid, None).unwrap(), WaitStatus::Exited(_, 0)),
        "{text}"
    );
    assert_eq!(
        facts(&text).get("marker").map(String::as_str),
        Some("written"),
        "{text}"
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "the mount (or its file) landed outside the rootfs"
    );
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&outside.display().to_string()));
    assert!(!Path::new("/cfrt-upmnt").exists());
}

#[test]
fn exec_runs_in_the_containers_namespaces_with_its_exit_code() {
    if !is_root("exec_runs_in_the_containers_namespaces_with_its_exit_code") {
        return;
    }
    let fx = Fixture::new("exec");
    fx.pod("ex");
    let cfg = fx.create("ex", &sh("svc", "echo ready; exec sleep 30"));
    let (pid, mut out) = fx.start(&cfg);
    let mut first = [0u8; 6];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");

    let (r, w) = nix::unistd::pipe().unwrap();
    let process = ExecProcess {
        args: vec![
            "sh".into(),
            "-c".into(),
            "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline); echo host=$(hostname); grep -E '^(CapEff|Seccomp)' /proc/self/status | tr ':' '='; echo env=$FOO; exit 3".into(),
        ],
        env: vec!["FOO=bar".into()],
        user: None,
        cwd: None,
    };
    let epid = fx
        .rt
        .exec(
            &cfg,
            pid,
            &process,
            Stdio {
                stdin: None,
                stdout: Some(w),
                stderr: None,
            },
        )
        .unwrap();
    let mut text = String::new();
    fs::File::from(r).read_to_string(&mut text).unwrap();
    assert_eq!(
        waitpid(epid, None).unwrap(),
        WaitStatus::Exited(epid, 3),
        "{text}"
    );
    let f = facts(&text);
    assert_eq!(f["pid1"], "sleep 30", "{text}");
    assert_eq!(f["host"], "ex");
    assert_eq!(f["CapEff"], "00000000a80425fb");
    assert_eq!(f["Seccomp"], "2");
    assert_eq!(f["env"], "bar");

    // pid 1 of a pid namespace ignores signals it has no handler for (SIGTERM to `sleep`),
    // so stop ends with SIGKILL after the grace period.
    let t = Instant::now();
    let status = fx
        .rt
        .stop(
            &cfg,
            pid,
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_millis(300),
        )
        .unwrap();
    assert_eq!(
        status,
        WaitStatus::Signaled(pid, nix::sys::signal::Signal::SIGKILL, false)
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn init_failures_come_back_with_their_cause() {
    if !is_root("init_failures_come_back_with_their_cause") {
        return;
    }
    let fx = Fixture::new("errors");
    fx.pod("err");
    let mut spec = sh("missing", "true");
    spec.command = Some(vec!["no-such-program".into()]);
    let cfg = fx.create("err", &spec);
    let err = fx.rt.start(&cfg, Stdio::default()).unwrap_err().to_string();
    assert!(
        err.contains("no-such-program") && err.contains("not found"),
        "{err}"
    );

    let mut spec = sh("baduser", "true");
    spec.user = Some("nosuchuser".into());
    let cfg = fx.create("err", &spec);
    let err = fx.rt.start(&cfg, Stdio::default()).unwrap_err().to_string();
    assert!(err.contains("unable to find user nosuchuser"), "{err}");

    // A non-root user keeps no effective capabilities (Docker since CVE-2022-24769).
    let mut spec = sh("nobody", "id -u; grep CapEff /proc/self/status");
    spec.user = Some("nobody".into());
    let (out, status, _) = fx.run("err", &spec);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{out}");
    assert!(out.starts_with("65534\n"), "{out}");
    assert!(out.contains("0000000000000000"), "{out}");
}

#[test]
fn cap_add_sysctls_ulimits_and_privileged_apply() {
    if !is_root("cap_add_sysctls_ulimits_and_privileged_apply") {
        return;
    }
    let fx = Fixture::new("settings");
    fx.pod("set");
    let mut spec = sh(
        "tuned",
        "grep CapEff /proc/self/status | tr ':' '='; echo somaxconn=$(cat /proc/sys/net/core/somaxconn); echo nofile=$(ulimit -n); echo procsys=$(echo 1 > /proc/sys/net/core/somaxconn 2>/dev/null && echo rw || echo ro)",
    );
    spec.cap_add = vec!["NET_ADMIN".into()];
    spec.cap_drop = vec!["MKNOD".into()];
    spec.sysctls
        .insert("net.core.somaxconn".into(), "1234".into());
    spec.ulimits.insert("nofile".into(), (1000, 1000));
    let (out, status, _) = fx.run("set", &spec);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{out}");
    let f = facts(&out);
    // Default set + NET_ADMIN (bit 12) - MKNOD (bit 27).
    assert_eq!(
        f["CapEff"],
        format!("{:016x}", (0xa80425fbu64 | 1 << 12) & !(1 << 27))
    );
    assert_eq!(f["somaxconn"], "1234", "{out}");
    assert_eq!(f["nofile"], "1000", "{out}");
    assert_eq!(f["procsys"], "ro", "{out}");

    let mut spec = sh(
        "priv",
        "grep -E '^(CapEff|Seccomp|NoNewPrivs)' /proc/self/status | tr ':' '='; echo userns=$(unshare -U true 2>/dev/null && echo allowed || echo denied)",
    );
    spec.privileged = true;
    let (out, status, _) = fx.run("set", &spec);
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{out}");
    let f = facts(&out);
    let host = facts(
        &fs::read_to_string("/proc/self/status")
            .unwrap()
            .replace(':', "="),
    );
    assert_eq!(
        f["CapEff"], host["CapEff"],
        "privileged keeps the agent's capabilities"
    );
    assert_eq!(f["Seccomp"], "0");
    assert_eq!(f["NoNewPrivs"], "0");
    assert_eq!(f["userns"], "allowed", "{out}");

    // cap_add relaxes the seccomp rule Docker gates on that capability (syslog ← SYSLOG).
    let mut spec = sh(
        "syslog",
        "dmesg >/dev/null 2>&1 && echo dmesg=allowed || echo dmesg=denied",
    );
    spec.cap_add = vec!["SYSLOG".into()];
    let (out, _, _) = fx.run("set", &spec);
    assert_eq!(facts(&out)["dmesg"], "allowed", "{out}");
    let (out, _, _) = fx.run(
        "set",
        &sh(
            "nosyslog",
            "dmesg >/dev/null 2>&1 && echo dmesg=allowed || echo dmesg=denied",
        ),
    );
    assert_eq!(facts(&out)["dmesg"], "denied", "{out}");
}

/// `cargo test -p compose-fleet-agent --release --test runtime -- --ignored --nocapture bench`
#[test]
#[ignore]
fn bench_create_start_delete_true_vs_crun() {
    if !is_root("bench_create_start_delete_true_vs_crun") {
        return;
    }
    let runs = 50;
    let fx = Fixture::new("bench");
    fx.pod("bench");
    let spec = ContainerSpec {
        service: "t".into(),
        replica: 1,
        image: "busybox".into(),
        command: Some(vec!["true".into()]),
        ..Default::default()
    };
    // crun with an equivalent bundle: the same rootfs (read-only, no overlay to set up: in
    // crun's favour), joining the same pod netns, new pid/mount/ipc/uts namespaces.
    let bundle = fx.state.join("crun-bundle");
    fs::create_dir_all(&bundle).unwrap();
    let spec_out = std::process::Command::new("crun")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(spec_out.status.success(), "{spec_out:?}");
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    config["root"] = serde_json::json!({"path": fx.state.join("layer"), "readonly": true});
    config["process"]["args"] = serde_json::json!(["true"]);
    config["process"]["terminal"] = serde_json::json!(false);
    let netns = fx.rt.pod_dir(&fx.project, "bench").join("net");
    for ns in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = serde_json::json!(netns);
        }
    }
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let cfg = fx.config("bench", &spec);
    let crun_root = fx.state.join("crun-state");
    let project = fx.project.clone();
    // This host mounts hugetlb on its cgroup v2 tree beside v1 ("hybrid"), which crun refuses;
    // both run from a thread with a private mount namespace where that v2 mount is gone, so crun
    // manages v1 cgroups like we do (children forked from the thread inherit its namespace).
    // Two orders, since other processes load this machine unevenly: alternating runs, then
    // blocks (all of ours, then all of crun's).
    let results = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .unwrap();
                let _ =
                    nix::mount::umount2("/sys/fs/cgroup/unified", nix::mount::MntFlags::MNT_DETACH);
                let mut phases = [Duration::ZERO; 4];
                let ours_once = |phases: &mut [Duration; 4]| {
                    let t = Instant::now();
                    fx.rt.create(&cfg).unwrap();
                    let t1 = Instant::now();
                    let pid = fx.rt.start(&cfg, Stdio::default()).unwrap();
                    let t2 = Instant::now();
                    let _ = waitpid(pid, None).unwrap();
                    let t3 = Instant::now();
                    fx.rt.delete(&cfg).unwrap();
                    let t4 = Instant::now();
                    for (slot, d) in phases.iter_mut().zip([t1 - t, t2 - t1, t3 - t2, t4 - t3]) {
                        *slot += d;
                    }
                    let took = t.elapsed();
                    // Our deferred directory removal must not load crun's turn (untimed).
                    let trash = fx.state.join("trash");
                    while fs::read_dir(&trash).map(|d| d.count() > 0).unwrap_or(false) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    took
                };
                let crun_once = |i: usize| {
                    let t = Instant::now();
                    let out = std::process::Command::new("crun")
                        .arg("--root")
                        .arg(&crun_root)
                        .args(["run", "--bundle"])
                        .arg(&bundle)
                        .arg(format!("{project}-crun-{i}"))
                        .stdin(std::process::Stdio::null())
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                    t.elapsed()
                };
                let (mut alt_ours, mut alt_crun) = (Vec::new(), Vec::new());
                for i in 0..runs {
                    alt_ours.push(ours_once(&mut phases));
                    alt_crun.push(crun_once(i));
                }
                let block_ours: Vec<Duration> = (0..runs).map(|_| ours_once(&mut phases)).collect();
                let block_crun: Vec<Duration> = (runs..2 * runs).map(crun_once).collect();
                (alt_ours, alt_crun, block_ours, block_crun, phases)
            })
            .join()
            .unwrap()
    });
    let (mut alt_ours, mut alt_crun, mut block_ours, mut block_crun, phases) = results;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / (2 * runs) as f64;
    println!(
        "compose-fleet mean per phase: create {:.2} ms, start {:.2} ms, wait {:.2} ms, delete {:.2} ms",
        ms(phases[0]),
        ms(phases[1]),
        ms(phases[2]),
        ms(phases[3])
    );
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "create+start+wait+delete of busybox `true`, p50 over {runs} runs (cgroup {}):\n  alternating: compose-fleet {:.2} ms, crun {:.2} ms\n  in blocks:   compose-fleet {:.2} ms, crun {:.2} ms",
        fx.rt.cgroup_version(),
        p50(&mut alt_ours),
        p50(&mut alt_crun),
        p50(&mut block_ours),
        p50(&mut block_crun),
    );
}
