//! Supervision on real processes: shims, restart policies, health checks, logs, exec, re-adoption
//! after `kill -9` of the supervising process, state files. Containers run through the plain
//! process runtime (no isolation: that is the runtime's own tests), from the real agent binary's
//! `shim` mode.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compose_fleet_agent::proto::{
    ApplyPodsRequest, ApplyReport, ApplyRequest, ContainerSpec, ContainerStatus, ExecRequest,
    FileDelivery, Healthcheck, LogLine, LogsRequest, Mount, PodSpec, Request, RequestFrame,
    Response, ResponseFrame, RestartPolicy, StatusReport, Stream, WatchReport, WatchRequest,
};
use compose_fleet_agent::supervisor::restart::Exit;
use compose_fleet_agent::supervisor::shim::{self, ExitRecord, ShimRecord};
use compose_fleet_agent::supervisor::state::StateRoot;
use compose_fleet_agent::supervisor::{HostImages, ProcessRuntime, Supervisor, SupervisorConfig};

/// The agent binary whose `shim` mode the tests run; `COMPOSE_FLEET_TEST_AGENT` substitutes
/// another build (the static release one, to measure a shim's RSS).
fn agent() -> String {
    std::env::var("COMPOSE_FLEET_TEST_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_compose-fleet-agent").to_string())
}
const WAIT: Duration = Duration::from_secs(30);

/// A state root that, however the test ends, kills every shim and container it started and
/// unmounts the secret tmpfs mounts under it.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        Root {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> SupervisorConfig {
        SupervisorConfig::new(
            self.path(),
            agent(),
            Arc::new(ProcessRuntime),
            Arc::new(HostImages),
        )
    }

    async fn open(&self) -> Supervisor {
        Supervisor::open(self.config()).await.expect("open")
    }

    fn container_dir(&self, project: &str, pod: &str, service: &str) -> PathBuf {
        StateRoot::new(self.path()).container(project, pod, service, 1)
    }

    fn shim_record(&self, project: &str, pod: &str, service: &str) -> ShimRecord {
        let path = self
            .container_dir(project, pod, service)
            .join(shim::SHIM_FILE);
        serde_json::from_slice(&std::fs::read(&path).expect("shim.json")).expect("parses")
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for path in find_files(self.path(), "shim.json") {
            if let Ok(rec) =
                serde_json::from_slice::<ShimRecord>(&std::fs::read(&path).unwrap_or_default())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(-(rec.pid as i32)),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(rec.shim_pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for path in find_dirs(self.path(), "secrets") {
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        }
        // The isolating runtime's pod namespaces are bind-mounted files.
        for ns in ["net", "uts", "ipc"] {
            for path in find_files(self.path(), ns) {
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn find_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(find_files(&p, name));
            } else if e.file_name() == name {
                out.push(p);
            }
        }
    }
    out
}

fn find_dirs(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                if e.file_name() == name {
                    out.push(p.clone());
                }
                out.extend(find_dirs(&p, name));
            }
        }
    }
    out
}

fn sh(service: &str, script: &str, restart: RestartPolicy) -> ContainerSpec {
    ContainerSpec {
        service: service.into(),
        replica: 1,
        image: "host".into(),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        restart,
        stop_grace_period_ms: Some(2000),
        ..ContainerSpec::default()
    }
}

fn pod(name: &str, hash: &str, containers: Vec<ContainerSpec>) -> PodSpec {
    PodSpec {
        name: name.into(),
        hostname: name.into(),
        spec_hash: hash.into(),
        containers,
        ports: Vec::new(),
        network: Default::default(),
    }
}

async fn call(sup: &Supervisor, request: Request) -> Vec<ResponseFrame> {
    let mut rx = sup.handle(RequestFrame { id: 7, request });
    let mut frames = Vec::new();
    while let Some(f) = rx.recv().await {
        assert_eq!(f.id, Some(7));
        let last = !f.more;
        frames.push(f);
        if last {
            break;
        }
    }
    frames
}

async fn apply(sup: &Supervisor, project: &str, pods: Vec<PodSpec>) -> ApplyReport {
    let frames = call(
        sup,
        Request::Apply(ApplyRequest {
            project: project.into(),
            pods,
            registry_auth: BTreeMap::new(),
            insecure_registries: Vec::new(),
            network: None,
        }),
    )
    .await;
    match frames.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Applied(r)),
            ..
        }] => r.clone(),
        other => panic!("apply answered {other:?}"),
    }
}

async fn status(sup: &Supervisor, project: &str) -> StatusReport {
    match call(
        sup,
        Request::Status {
            project: Some(project.into()),
        },
    )
    .await
    .as_slice()
    {
        [ResponseFrame {
            ok: Some(Response::Status(s)),
            ..
        }] => s.clone(),
        other => panic!("status answered {other:?}"),
    }
}

async fn container(sup: &Supervisor, project: &str, pod: &str, service: &str) -> ContainerStatus {
    let s = status(sup, project).await;
    s.pods
        .iter()
        .find(|p| p.name == pod)
        .and_then(|p| p.containers.iter().find(|c| c.service == service))
        .cloned()
        .unwrap_or_else(|| panic!("no container {pod}/{service} in {s:?}"))
}

/// Polls the container's status until `done` holds, failing after [`WAIT`] with the last state.
async fn wait_for(
    sup: &Supervisor,
    project: &str,
    pod: &str,
    service: &str,
    what: &str,
    done: impl Fn(&ContainerStatus) -> bool,
) -> ContainerStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = container(sup, project, pod, service).await;
        if done(&c) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn remove(sup: &Supervisor, project: &str, volumes: bool) -> Vec<String> {
    match call(
        sup,
        Request::Remove {
            project: project.into(),
            volumes,
            fence: None,
        },
    )
    .await
    .as_slice()
    {
        [ResponseFrame {
            ok: Some(Response::Removed { pods }),
            ..
        }] => pods.clone(),
        other => panic!("remove answered {other:?}"),
    }
}

async fn logs(sup: &Supervisor, project: &str, tail: Option<u64>) -> Vec<LogLine> {
    let frames = call(
        sup,
        Request::Logs(LogsRequest {
            project: project.into(),
            services: Vec::new(),
            tail,
            follow: false,
            since: None,
        }),
    )
    .await;
    let (last, lines) = frames.split_last().expect("a final frame");
    assert_eq!(last.ok, Some(Response::End), "{last:?}");
    lines
        .iter()
        .map(|f| match &f.ok {
            Some(Response::LogLine(l)) => l.clone(),
            other => panic!("not a log line: {other:?}"),
        })
        .collect()
}

fn alive(pid: u32, start: u64) -> bool {
    shim::is_same_process(pid, start)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_2_restarts_exactly_twice_then_stops() {
    let root = Root::new();
    let sup = root.open().await;
    let policy = RestartPolicy::OnFailure {
        max_retries: Some(2),
    };
    apply(
        &sup,
        "p",
        vec![pod(
            "app-1",
            "h",
            vec![sh("app", "echo run; exit 3", policy)],
        )],
    )
    .await;
    let c = wait_for(&sup, "p", "app-1", "app", "the final exit", |c| {
        c.state == "exited"
    })
    .await;
    assert_eq!((c.restarts, c.exit_code), (2, Some(3)), "{c:?}");
    // Nothing restarts it later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = container(&sup, "p", "app-1", "app").await;
    assert_eq!((c.state.as_str(), c.restarts), ("exited", 2));
    let runs = logs(&sup, "p", None).await;
    assert_eq!(
        runs.iter().filter(|l| l.line == "run").count(),
        3,
        "{runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_restarts_with_growing_backoff() {
    let root = Root::new();
    let sup = root.open().await;
    apply(
        &sup,
        "p",
        vec![pod(
            "app-1",
            "h",
            vec![sh("app", "echo start", RestartPolicy::Always)],
        )],
    )
    .await;
    wait_for(&sup, "p", "app-1", "app", "five restarts", |c| {
        c.restarts >= 5
    })
    .await;
    let starts: Vec<u64> = find_log_times(&root, "p", "app-1", "app");
    remove(&sup, "p", true).await;
    assert!(starts.len() >= 5, "{starts:?}");
    let gaps: Vec<u64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between starts (ms): {gaps:?}");
    for (i, gap) in gaps.iter().take(4).enumerate() {
        let backoff = 100u64 << i;
        assert!(
            *gap >= backoff,
            "restart {i} came after {gap} ms, before its {backoff} ms backoff: {gaps:?}"
        );
    }
    assert!(gaps[3] > gaps[0], "backoff did not grow: {gaps:?}");
}

fn find_log_times(root: &Root, project: &str, pod: &str, service: &str) -> Vec<u64> {
    let dir = root.container_dir(project, pod, service);
    compose_fleet_agent::supervisor::logfile::read_all(&dir, 3)
        .into_iter()
        .map(|r| r.time_ms)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_drives_starting_healthy_unhealthy() {
    let root = Root::new();
    let sup = root.open().await;
    let flag = root.path().join("ok");
    let mut spec = sh("db", "exec sleep 1000", RestartPolicy::No);
    spec.healthcheck = Some(Healthcheck {
        test: vec!["CMD-SHELL".into(), format!("test -e {}", flag.display())],
        interval_ms: 200,
        timeout_ms: 2000,
        retries: 2,
        start_period_ms: 60_000,
        start_interval_ms: 100,
    });
    apply(&sup, "p", vec![pod("db-1", "h", vec![spec])]).await;
    wait_for(&sup, "p", "db-1", "db", "starting", |c| {
        c.health.as_deref() == Some("starting")
    })
    .await;
    // Failures in the start period do not make it unhealthy.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = container(&sup, "p", "db-1", "db").await;
    assert_eq!(c.health.as_deref(), Some("starting"));
    std::fs::write(&flag, b"").expect("flag");
    wait_for(&sup, "p", "db-1", "db", "healthy", |c| {
        c.health.as_deref() == Some("healthy")
    })
    .await;
    std::fs::remove_file(&flag).expect("unflag");
    let c = wait_for(&sup, "p", "db-1", "db", "unhealthy", |c| {
        c.health.as_deref() == Some("unhealthy")
    })
    .await;
    assert_eq!(c.state, "running");
    remove(&sup, "p", true).await;
}

async fn watch(sup: Supervisor, project: &str, since: u64, timeout_ms: u64) -> WatchReport {
    let request = Request::Watch(WatchRequest {
        project: project.into(),
        since,
        timeout_ms,
    });
    match call(&sup, request).await.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Watched(w)),
            ..
        }] => w.clone(),
        other => panic!("watch answered {other:?}"),
    }
}

fn health_of(w: &WatchReport, pod: &str, service: &str) -> Option<(String, Option<String>)> {
    w.status
        .pods
        .iter()
        .find(|p| p.name == pod)
        .and_then(|p| p.containers.iter().find(|c| c.service == service))
        .map(|c| (c.state.clone(), c.health.clone()))
}

/// `Watch` (what `up` waits on instead of polling): answered at once when asked with a change
/// number that is not the current one; with nothing changing, at its timeout and with the same
/// number; and the moment something changes (here: the health check passes), long before its
/// timeout, with a later number and the new status.
#[tokio::test]
async fn watch_answers_at_a_change_and_at_its_timeout() {
    let root = Root::new();
    let sup = root.open().await;
    let flag = root.path().join("ok");
    let mut spec = sh("db", "exec sleep 1000", RestartPolicy::No);
    spec.healthcheck = Some(Healthcheck {
        test: vec!["CMD-SHELL".into(), format!("test -e {}", flag.display())],
        interval_ms: 100,
        timeout_ms: 2000,
        // Failing probes change nothing until this many.
        retries: 100_000,
        start_period_ms: 0,
        start_interval_ms: 0,
    });
    let applied = apply(&sup, "p", vec![pod("db-1", "h", vec![spec])]).await;
    assert!(applied.changes > 0, "{applied:?}");
    // 0 is never current: answered at once, numbered at or after the apply.
    let mut seen = watch(sup.clone(), "p", 0, 60_000).await;
    assert!(seen.changes >= applied.changes, "{seen:?} {applied:?}");
    // Each answer is a change until the container runs and its check is under way.
    while health_of(&seen, "db-1", "db") != Some(("running".into(), Some("starting".into()))) {
        let next = watch(sup.clone(), "p", seen.changes, 60_000).await;
        assert!(next.changes > seen.changes, "{next:?} after {seen:?}");
        seen = next;
    }
    // Nothing changes while the check fails: the timeout answers, with the same number.
    let asked = Instant::now();
    let quiet = watch(sup.clone(), "p", seen.changes, 300).await;
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(quiet.changes, seen.changes);
    assert_eq!(
        health_of(&quiet, "db-1", "db"),
        Some(("running".into(), Some("starting".into())))
    );
    // A long watch answers when the check passes, not at its timeout.
    let asked = Instant::now();
    let waiting = tokio::spawn(watch(sup.clone(), "p", seen.changes, 60_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&flag, b"").expect("flag");
    let changed = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the watch answered at the change")
        .expect("joined");
    assert!(asked.elapsed() < Duration::from_secs(60));
    assert!(changed.changes > seen.changes);
    assert_eq!(
        health_of(&changed, "db-1", "db"),
        Some(("running".into(), Some("healthy".into())))
    );
    remove(&sup, "p", true).await;
}

/// Not a test on its own: the supervising process that `kill_9_...` starts and kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of kill_9_of_the_supervisor_leaves_containers_running_and_they_are_readopted"]
async fn supervisor_child_process() {
    let Ok(root) = std::env::var("CF_SUPERVISOR_CHILD_ROOT") else {
        return;
    };
    let cfg = SupervisorConfig::new(
        &root,
        agent(),
        Arc::new(ProcessRuntime),
        Arc::new(HostImages),
    );
    let sup = Supervisor::open(cfg).await.expect("open");
    apply(
        &sup,
        "p",
        vec![
            pod(
                "a-1",
                "h",
                vec![sh("a", "exec sleep 1000", RestartPolicy::Always)],
            ),
            pod(
                "b-1",
                "h",
                vec![sh("b", "exec sleep 1000", RestartPolicy::Always)],
            ),
        ],
    )
    .await;
    wait_for(&sup, "p", "a-1", "a", "running", |c| c.state == "running").await;
    wait_for(&sup, "p", "b-1", "b", "running", |c| c.state == "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("READY");
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_supervisor_leaves_containers_running_and_they_are_readopted() {
    let root = Root::new();
    let mut child = std::process::Command::new(std::env::current_exe().expect("test exe"))
        .args([
            "--exact",
            "supervisor_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CF_SUPERVISOR_CHILD_ROOT", root.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the supervising process");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("READY"));
    assert!(ready, "the supervising process did not get ready");

    let before: Vec<ShimRecord> = ["a", "b"]
        .iter()
        .map(|s| root.shim_record("p", &format!("{s}-1"), s))
        .collect();
    let supervisor_rss = vm_rss_kib(child.id());
    let shim_rss: Vec<Option<u64>> = before.iter().map(|r| vm_rss_kib(r.shim_pid)).collect();
    eprintln!(
        "measured: supervising test process (tokio + supervisor + 2 containers, debug build) VmRSS {supervisor_rss:?} KiB; shims VmRSS {shim_rss:?} KiB"
    );

    child.kill().expect("kill -9 the supervisor");
    child.wait().expect("reap it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for r in &before {
        assert!(
            alive(r.pid, r.pid_start),
            "container {} died with its supervisor",
            r.pid
        );
        assert!(
            alive(r.shim_pid, r.shim_start),
            "shim {} died with its supervisor",
            r.shim_pid
        );
    }

    // A new supervisor adopts them: same pids, same start times, nothing restarted.
    let sup = root.open().await;
    for (s, r) in ["a", "b"].iter().zip(&before) {
        let c = container(&sup, "p", &format!("{s}-1"), s).await;
        assert_eq!(
            (c.state.as_str(), c.pid, c.restarts),
            ("running", Some(r.pid), 0),
            "{c:?}"
        );
        assert_eq!(
            root.shim_record("p", &format!("{s}-1"), s),
            *r,
            "the shim was replaced"
        );
        assert!(alive(r.pid, r.pid_start));
    }

    // And keeps supervising them: a crash is restarted by the policy.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0].pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill a container");
    let c = wait_for(&sup, "p", "a-1", "a", "a restart", |c| {
        c.restarts == 1 && c.state == "running"
    })
    .await;
    assert_ne!(c.pid, Some(before[0].pid));
    assert_eq!(
        container(&sup, "p", "b-1", "b").await.pid,
        Some(before[1].pid)
    );

    let removed = remove(&sup, "p", true).await;
    assert_eq!(removed, ["a-1", "b-1"]);
    assert!(
        !alive(before[1].pid, before[1].pid_start),
        "remove left a container running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_captured_with_rotation() {
    let root = Root::new();
    let mut cfg = root.config();
    cfg.log_max_bytes = 4096;
    cfg.log_max_files = 3;
    let sup = Supervisor::open(cfg).await.expect("open");
    let script = "i=0; while [ $i -lt 500 ]; do echo \"line $i\"; i=$((i+1)); done; echo oops >&2; printf 'no newline'";
    apply(
        &sup,
        "p",
        vec![pod(
            "app-1",
            "h",
            vec![sh("app", script, RestartPolicy::No)],
        )],
    )
    .await;
    wait_for(&sup, "p", "app-1", "app", "exit", |c| c.state == "exited").await;
    let dir = root.container_dir("p", "app-1", "app");
    for n in 0..3 {
        let name = if n == 0 {
            "container.log".to_string()
        } else {
            format!("container.log.{n}")
        };
        let size = std::fs::metadata(dir.join(&name)).expect(&name).len();
        assert!(size <= 4096, "{name} has {size} bytes");
    }
    assert!(
        !dir.join("container.log.3").exists(),
        "more than 3 files kept"
    );

    let tail = logs(&sup, "p", Some(3)).await;
    let tail: Vec<(Stream, &str)> = tail.iter().map(|l| (l.stream, l.line.as_str())).collect();
    assert_eq!(
        tail,
        [
            (Stream::Stdout, "line 499"),
            (Stream::Stderr, "oops"),
            (Stream::Stdout, "no newline")
        ]
    );
    let all = logs(&sup, "p", None).await;
    assert!(all.len() < 500, "rotation dropped the oldest lines");
    assert!(all.iter().all(|l| l.pod == "app-1" && l.service == "app"));
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines() {
    let root = Root::new();
    let sup = root.open().await;
    let script = "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.1; done";
    apply(
        &sup,
        "p",
        vec![pod(
            "app-1",
            "h",
            vec![sh("app", script, RestartPolicy::No)],
        )],
    )
    .await;
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;
    let mut rx = sup.handle(RequestFrame {
        id: 1,
        request: Request::Logs(LogsRequest {
            project: "p".into(),
            services: vec!["app".into()],
            tail: Some(0),
            follow: true,
            since: None,
        }),
    });
    let mut got = Vec::new();
    while got.len() < 5 {
        let f = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a followed line in time")
            .expect("stream open");
        assert!(f.more);
        let Some(Response::LogLine(l)) = f.ok else {
            panic!("{f:?}")
        };
        got.push(l.line);
    }
    let n: Vec<u64> = got
        .iter()
        .map(|l| l.trim_start_matches("tick ").parse().expect("number"))
        .collect();
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "lines lost or repeated: {got:?}"
    );
    drop(rx);
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses_are_recorded() {
    let root = Root::new();
    let sup = root.open().await;
    apply(
        &sup,
        "p",
        vec![pod(
            "x-1",
            "h",
            vec![
                sh("code", "exit 7", RestartPolicy::No),
                sh("signal", "kill -9 $$", RestartPolicy::No),
                {
                    let mut c = sh("missing", "", RestartPolicy::No);
                    c.command = Some(vec!["/nonexistent/binary".into()]);
                    c
                },
            ],
        )],
    )
    .await;
    let c = wait_for(&sup, "p", "x-1", "code", "exit", |c| c.state == "exited").await;
    assert_eq!(c.exit_code, Some(7));
    let c = wait_for(&sup, "p", "x-1", "signal", "exit", |c| c.state == "exited").await;
    assert_eq!(c.exit_code, Some(137));
    let rec: ExitRecord = serde_json::from_slice(
        &std::fs::read(
            root.container_dir("p", "x-1", "signal")
                .join(shim::EXIT_FILE),
        )
        .expect("exit.json"),
    )
    .expect("parses");
    assert_eq!(rec.exit, Exit::Signal { signal: 9 });
    assert!(!rec.oom_killed);
    let c = wait_for(&sup, "p", "x-1", "missing", "failure", |c| {
        c.state == "failed"
    })
    .await;
    assert_eq!(c.exit_code, Some(127));
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_with_changed_spec_hash_replaces_only_that_pod() {
    let root = Root::new();
    let sup = root.open().await;
    let with_volume = |script: &str| {
        let mut c = sh("b", script, RestartPolicy::Always);
        c.mounts = vec![Mount::Volume {
            name: "data".into(),
            target: "/data".into(),
            read_only: false,
        }];
        c
    };
    let pods = |hash_b: &str| {
        vec![
            pod(
                "a-1",
                "ha",
                vec![sh("a", "exec sleep 1000", RestartPolicy::Always)],
            ),
            pod("b-1", hash_b, vec![with_volume("exec sleep 1000")]),
        ]
    };
    let r = apply(&sup, "p", pods("hb1")).await;
    assert_eq!(r.created, ["a-1", "b-1"]);
    let a = wait_for(&sup, "p", "a-1", "a", "running", |c| c.state == "running").await;
    let b = wait_for(&sup, "p", "b-1", "b", "running", |c| c.state == "running").await;
    let volume = StateRoot::new(root.path()).volume("p", "data");
    std::fs::write(volume.join("kept"), b"1").expect("write into the volume");
    let b_rec = root.shim_record("p", "b-1", "b");

    let r = apply(&sup, "p", pods("hb1")).await;
    assert_eq!(
        (r.unchanged.len(), r.created.len(), r.replaced.len()),
        (2, 0, 0)
    );

    let r = apply(&sup, "p", pods("hb2")).await;
    assert_eq!(r.replaced, ["b-1"]);
    assert_eq!(r.unchanged, ["a-1"]);
    let b2 = wait_for(&sup, "p", "b-1", "b", "running", |c| c.state == "running").await;
    assert_ne!(b2.pid, b.pid, "b was not replaced");
    assert_eq!(b2.restarts, 0);
    assert_eq!(
        container(&sup, "p", "a-1", "a").await.pid,
        a.pid,
        "a was touched"
    );
    assert!(
        volume.join("kept").exists(),
        "the named volume did not survive replacement"
    );
    assert!(
        !alive(b_rec.pid, b_rec.pid_start),
        "the old b is still running"
    );

    let r = apply(&sup, "p", vec![pods("hb2").remove(0)]).await;
    assert_eq!(
        (r.removed.as_slice(), r.unchanged.as_slice()),
        (&["b-1".to_string()][..], &["a-1".to_string()][..])
    );
    assert_eq!(status(&sup, "p").await.pods.len(), 1);

    remove(&sup, "p", false).await;
    assert!(
        volume.join("kept").exists(),
        "remove without volumes deleted a volume"
    );
    assert!(status(&sup, "p").await.pods.is_empty());
    remove(&sup, "p", true).await;
    assert!(!volume.exists(), "remove with volumes kept a volume");
}

async fn apply_pods(
    sup: &Supervisor,
    project: &str,
    pods: Vec<PodSpec>,
    remove: &[&str],
) -> ApplyReport {
    let frames = call(
        sup,
        Request::ApplyPods(ApplyPodsRequest {
            network: None,
            project: project.into(),
            pods,
            remove: remove.iter().map(|s| s.to_string()).collect(),
            registry_auth: BTreeMap::new(),
            insecure_registries: Vec::new(),
            fence: None,
            start_first: Vec::new(),
            retire: Vec::new(),
        }),
    )
    .await;
    match frames.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Applied(r)),
            ..
        }] => r.clone(),
        other => panic!("apply_pods answered {other:?}"),
    }
}

/// `up` sends one pod at a time as its flow releases it: the project's other pods stay as they
/// are, concurrent requests do not undo each other, and a named pod can be removed alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_pods_changes_only_the_pods_it_names() {
    let root = Root::new();
    let sup = root.open().await;
    let one = |name: &str, hash: &str| {
        pod(
            name,
            hash,
            vec![sh(
                name.trim_end_matches("-1"),
                "exec sleep 1000",
                RestartPolicy::Always,
            )],
        )
    };
    let r = apply_pods(&sup, "p", vec![one("a-1", "ha")], &[]).await;
    assert_eq!(r.created, ["a-1"]);
    let a = wait_for(&sup, "p", "a-1", "a", "running", |c| c.state == "running").await;
    // Two at once, as a flow releases independent pods together.
    let (rb, rc) = tokio::join!(
        apply_pods(&sup, "p", vec![one("b-1", "hb")], &[]),
        apply_pods(&sup, "p", vec![one("c-1", "hc")], &[]),
    );
    assert_eq!(
        (rb.created, rc.created),
        (vec!["b-1".to_string()], vec!["c-1".to_string()])
    );
    let b = wait_for(&sup, "p", "b-1", "b", "running", |c| c.state == "running").await;
    wait_for(&sup, "p", "c-1", "c", "running", |c| c.state == "running").await;
    assert_eq!(status(&sup, "p").await.pods.len(), 3);

    let r = apply_pods(&sup, "p", vec![one("b-1", "hb2")], &["c-1"]).await;
    assert_eq!(
        (r.replaced.as_slice(), r.removed.as_slice()),
        (&["b-1".to_string()][..], &["c-1".to_string()][..])
    );
    let b2 = wait_for(&sup, "p", "b-1", "b", "running", |c| c.state == "running").await;
    assert_ne!(b2.pid, b.pid, "b was not replaced");
    assert_eq!(
        container(&sup, "p", "a-1", "a").await.pid,
        a.pid,
        "a was touched"
    );
    let names: Vec<String> = status(&sup, "p")
        .await
        .pods
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["a-1", "b-1"]);
    remove(&sup, "p", true).await;
}

/// `ApplyPods` with the start-first fields (issue 12).
async fn handover(
    sup: &Supervisor,
    pods: Vec<PodSpec>,
    start_first: &[&str],
    retire: &[&str],
) -> ApplyReport {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let frames = call(
        sup,
        Request::ApplyPods(ApplyPodsRequest {
            network: None,
            project: "p".into(),
            pods,
            remove: Vec::new(),
            registry_auth: BTreeMap::new(),
            insecure_registries: Vec::new(),
            fence: None,
            start_first: names(start_first),
            retire: names(retire),
        }),
    )
    .await;
    match frames.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Applied(r)),
            ..
        }] => r.clone(),
        other => panic!("apply_pods answered {other:?}"),
    }
}

/// Start-first: the new generation runs beside the old one under its twin instance name, the
/// old one keeps running (across a daemon restart too) until it is retired, and then it is
/// stopped and its directory removed; a spec equal to the outgoing generation's goes back to it
/// without starting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_runs_two_generations_until_the_old_one_is_retired() {
    let root = Root::new();
    let sup = root.open().await;
    let web = |hash: &str| {
        pod(
            "web-1",
            hash,
            vec![sh("web", "exec sleep 1000", RestartPolicy::Always)],
        )
    };
    handover(&sup, vec![web("h1")], &[], &[]).await;
    let old = wait_for(&sup, "p", "web-1", "web", "running", |c| {
        c.state == "running"
    })
    .await;
    let r = handover(&sup, vec![web("h2")], &["web-1"], &[]).await;
    assert_eq!(r.replaced, ["web-1"]);
    let new = wait_for(&sup, "p", "web-1", "web", "running", |c| {
        c.state == "running" && c.pid != old.pid
    })
    .await;
    let s = status(&sup, "p").await;
    assert_eq!(s.pods.len(), 1, "one pod, two generations: {s:?}");
    let pod = &s.pods[0];
    assert_eq!((pod.spec_hash.as_str(), pod.instance()), ("h2", "web-1.b"));
    let outgoing = pod
        .outgoing
        .as_deref()
        .expect("the old generation is outgoing");
    assert_eq!(
        (outgoing.spec_hash.as_str(), outgoing.instance()),
        ("h1", "web-1")
    );
    assert_eq!(
        outgoing.containers[0].pid, old.pid,
        "the old generation still runs"
    );
    let state = StateRoot::new(root.path());
    assert!(state.pod("p", "web-1").exists() && state.pod("p", "web-1.b").exists());

    // A daemon restart adopts both generations.
    sup.detach().await;
    let sup = root.open().await;
    let s = status(&sup, "p").await;
    let pod = &s.pods[0];
    assert_eq!(pod.containers[0].pid, new.pid);
    assert_eq!(
        pod.outgoing.as_deref().map(|o| o.containers[0].pid),
        Some(old.pid),
        "{s:?}"
    );

    // Retired: stopped (its pid gone) and removed; the new generation untouched.
    handover(&sup, Vec::new(), &[], &["web-1"]).await;
    let s = status(&sup, "p").await;
    assert!(s.pods[0].outgoing.is_none(), "{s:?}");
    assert_eq!(s.pods[0].containers[0].pid, new.pid);
    assert!(
        !state.pod("p", "web-1").exists(),
        "the old instance's state is gone"
    );
    let pid = nix::unistd::Pid::from_raw(old.pid.expect("pid") as i32);
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "the old generation's process is gone"
    );

    // The next start-first replacement takes the pod's own name again; a revert to the
    // generation still serving goes back to it at once and stops the newer one.
    handover(&sup, vec![web("h3")], &["web-1"], &[]).await;
    let third = wait_for(&sup, "p", "web-1", "web", "running", |c| {
        c.state == "running" && c.pid != new.pid
    })
    .await;
    assert_eq!(status(&sup, "p").await.pods[0].instance(), "web-1");
    let r = handover(&sup, vec![web("h2")], &["web-1"], &[]).await;
    assert_eq!(r.replaced, ["web-1"]);
    let s = status(&sup, "p").await;
    let pod = &s.pods[0];
    assert_eq!(
        (
            pod.spec_hash.as_str(),
            pod.instance(),
            pod.containers[0].pid
        ),
        ("h2", "web-1.b", new.pid),
        "back on the generation that kept running: {s:?}"
    );
    assert!(pod.outgoing.is_none());
    let pid = nix::unistd::Pid::from_raw(third.pid.expect("pid") as i32);
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "the newer one stopped"
    );
    assert!(!state.pod("p", "web-1").exists());

    // Stop-first (not asked for start-first) replaces in place, under the same instance.
    handover(&sup, vec![web("h4")], &[], &[]).await;
    let s = status(&sup, "p").await;
    assert_eq!(s.pods[0].instance(), "web-1.b");
    assert!(s.pods[0].outgoing.is_none());
    remove(&sup, "p", true).await;
    assert!(!state.pod("p", "web-1.b").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_files_do_not_prevent_start() {
    let root = Root::new();
    let state = StateRoot::new(root.path());
    std::fs::create_dir_all(state.project("p")).expect("mkdir");
    std::fs::write(state.desired("p"), b"{\"pods\": [ torn").expect("write");
    let sup = root.open().await;
    assert!(status(&sup, "p").await.pods.is_empty());
    assert!(!state.desired("p").exists());
    let aside: Vec<_> = std::fs::read_dir(state.project("p"))
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aside.iter().any(|n| n.starts_with("desired.json.corrupt-")),
        "{aside:?}"
    );

    // A corrupt per-container file is survived too: the container is re-adopted regardless.
    apply(
        &sup,
        "p",
        vec![pod(
            "a-1",
            "h",
            vec![sh("a", "exec sleep 1000", RestartPolicy::No)],
        )],
    )
    .await;
    let c = wait_for(&sup, "p", "a-1", "a", "running", |c| c.state == "running").await;
    sup.detach().await;
    let dir = root.container_dir("p", "a-1", "a");
    std::fs::write(dir.join("observed.json"), b"\0\0garbage").expect("write");
    let sup = root.open().await;
    let again = container(&sup, "p", "a-1", "a").await;
    assert_eq!((again.state.as_str(), again.pid), ("running", c.pid));
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_stop_signal_then_sigkill_after_grace() {
    let root = Root::new();
    let sup = root.open().await;
    let out = root.path().join("polite-got");
    let mut polite = sh(
        "polite",
        &format!(
            "trap 'echo usr1 > {}; exit 0' USR1; while :; do sleep 0.05; done",
            out.display()
        ),
        RestartPolicy::Always,
    );
    polite.stop_signal = Some("USR1".into());
    polite.stop_grace_period_ms = Some(30_000);
    let mut stubborn = sh(
        "stubborn",
        "trap '' TERM; while :; do sleep 0.05; done",
        RestartPolicy::Always,
    );
    stubborn.stop_grace_period_ms = Some(1000);
    apply(
        &sup,
        "p",
        vec![
            pod("s-1", "h", vec![polite]),
            pod("t-1", "h", vec![stubborn]),
        ],
    )
    .await;
    wait_for(&sup, "p", "s-1", "polite", "running", |c| {
        c.state == "running"
    })
    .await;
    wait_for(&sup, "p", "t-1", "stubborn", "running", |c| {
        c.state == "running"
    })
    .await;
    let polite_rec = root.shim_record("p", "s-1", "polite");
    let stubborn_rec = root.shim_record("p", "t-1", "stubborn");

    // The polite one exits on its stop signal, long before its 30 s grace.
    let started = Instant::now();
    let r = apply(&sup, "p", vec![pod("t-1", "h", vec![])]).await;
    assert_eq!(r.removed, ["s-1"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited for the grace period"
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("the stop signal was not delivered"),
        "usr1\n"
    );
    assert!(!alive(polite_rec.pid, polite_rec.pid_start));

    // The stubborn one ignores SIGTERM: SIGKILL follows after its 1 s grace, not before.
    let started = Instant::now();
    remove(&sup, "p", true).await;
    let took = started.elapsed();
    eprintln!("stop of a TERM-ignoring container with 1 s grace took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "killed before the grace period: {took:?}"
    );
    assert!(
        !alive(stubborn_rec.pid, stubborn_rec.pid_start),
        "still running after SIGKILL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_output_and_exit_code() {
    let root = Root::new();
    let sup = root.open().await;
    let mut spec = sh("app", "exec sleep 1000", RestartPolicy::No);
    spec.env
        .insert("GREETING".into(), "hello from the container env".into());
    apply(&sup, "p", vec![pod("app-1", "h", vec![spec])]).await;
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;
    let frames = call(
        &sup,
        Request::Exec(ExecRequest {
            project: "p".into(),
            pod: "app-1".into(),
            service: "app".into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo $GREETING; echo err >&2; exit 5".into(),
            ],
            env: BTreeMap::new(),
            stdin: false,
            tty: None,
        }),
    )
    .await;
    let (last, output) = frames.split_last().expect("frames");
    assert_eq!(last.ok, Some(Response::ExecExit { code: 5 }));
    let mut out = String::new();
    let mut err = String::new();
    for f in output {
        assert!(f.more);
        match &f.ok {
            Some(Response::ExecOutput {
                stream: Stream::Stdout,
                data,
            }) => out.push_str(data),
            Some(Response::ExecOutput {
                stream: Stream::Stderr,
                data,
            }) => err.push_str(data),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("hello from the container env\n", "err\n")
    );

    let frames = call(
        &sup,
        Request::Exec(ExecRequest {
            project: "p".into(),
            pod: "nope".into(),
            service: "app".into(),
            command: vec!["true".into()],
            env: BTreeMap::new(),
            stdin: false,
            tty: None,
        }),
    )
    .await;
    assert!(
        frames[0]
            .err
            .as_ref()
            .is_some_and(|e| e.message.contains("no pod nope")),
        "{frames:?}"
    );
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_stdin_reads_what_exec_input_sends_in_order() {
    use compose_fleet_agent::proto::ExecInput;
    let root = Root::new();
    let sup = root.open().await;
    apply(
        &sup,
        "p",
        vec![pod(
            "app-1",
            "h",
            vec![sh("app", "exec sleep 1000", RestartPolicy::No)],
        )],
    )
    .await;
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;
    let mut rx = sup.handle(RequestFrame {
        id: 9,
        request: Request::Exec(ExecRequest {
            project: "p".into(),
            pod: "app-1".into(),
            service: "app".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "cat; exit 4".into()],
            env: BTreeMap::new(),
            stdin: true,
            tty: None,
        }),
    });
    let first = rx.recv().await.expect("a first frame");
    let Some(Response::ExecStarted { session }) = first.ok else {
        panic!("no session first: {first:?}");
    };
    // One input at a time, each answered before the next (as the CLI sends them).
    for (data, eof) in [(&b"one\n"[..], false), (b"two\n", false), (b"", true)] {
        let answer = call(
            &sup,
            Request::ExecInput(ExecInput {
                session,
                data_hex: hex::encode(data),
                eof,
            }),
        )
        .await;
        assert_eq!(
            answer.last().and_then(|f| f.ok.clone()),
            Some(Response::End)
        );
    }
    let mut out = String::new();
    let code = loop {
        let f = rx.recv().await.expect("frames until the exit");
        match f.ok {
            Some(Response::ExecOutput { data, .. }) => out.push_str(&data),
            Some(Response::ExecExit { code }) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((out.as_str(), code), ("one\ntwo\n", 4));
    // The session ended with the command.
    let late = call(
        &sup,
        Request::ExecInput(ExecInput {
            session,
            data_hex: String::new(),
            eof: true,
        }),
    )
    .await;
    assert!(late[0].err.is_some(), "{late:?}");
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_on_a_tty_sees_a_terminal_of_the_asked_size() {
    let root = Root::new();
    let sup = root.open().await;
    apply(
        &sup,
        "p",
        vec![pod(
            "app-1",
            "h",
            vec![sh("app", "exec sleep 1000", RestartPolicy::No)],
        )],
    )
    .await;
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;
    let frames = call(
        &sup,
        Request::Exec(ExecRequest {
            project: "p".into(),
            pod: "app-1".into(),
            service: "app".into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "test -t 0 && test -t 1 && test -t 2 && echo \"tty $(stty size)\"; exit 6".into(),
            ],
            env: BTreeMap::new(),
            stdin: false,
            tty: Some([30, 100]),
        }),
    )
    .await;
    let (last, output) = frames.split_last().expect("frames");
    assert_eq!(last.ok, Some(Response::ExecExit { code: 6 }));
    let out: String = output
        .iter()
        .filter_map(|f| match &f.ok {
            Some(Response::ExecOutput { data, .. }) => Some(data.as_str()),
            _ => None,
        })
        .collect();
    // The terminal's own line discipline turns `\n` into `\r\n`.
    assert_eq!(out, "tty 30 100\r\n");
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_stops_and_starts_containers_in_place() {
    use compose_fleet_agent::proto::{ControlAction, ControlRequest};
    let root = Root::new();
    let sup = root.open().await;
    apply(
        &sup,
        "p",
        vec![
            pod(
                "a-1",
                "h",
                vec![sh("a", "exec sleep 1000", RestartPolicy::Always)],
            ),
            pod(
                "b-1",
                "h",
                vec![sh("b", "exec sleep 1000", RestartPolicy::Always)],
            ),
        ],
    )
    .await;
    for (p, s) in [("a-1", "a"), ("b-1", "b")] {
        wait_for(&sup, "p", p, s, "running", |c| c.state == "running").await;
    }
    let control = |action| {
        call(
            &sup,
            Request::Control(ControlRequest {
                project: "p".into(),
                services: vec!["a".into()],
                action,
            }),
        )
    };
    let stopped = control(ControlAction::Stop).await;
    assert_eq!(
        stopped.last().and_then(|f| f.ok.clone()),
        Some(Response::Controlled {
            containers: vec!["a-1/a-1".into()]
        })
    );
    // Stopped for good: `always` does not bring it back; `b` is untouched.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_for(&sup, "p", "a-1", "a", "exited", |c| c.state == "exited").await;
    wait_for(&sup, "p", "b-1", "b", "running", |c| c.state == "running").await;
    let started = control(ControlAction::Start).await;
    assert_eq!(
        started.last().and_then(|f| f.ok.clone()),
        Some(Response::Controlled {
            containers: vec!["a-1/a-1".into()]
        })
    );
    wait_for(&sup, "p", "a-1", "a", "running", |c| c.state == "running").await;
    remove(&sup, "p", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_live_on_a_tmpfs_0400_and_never_reach_disk_state() {
    if !support::is_root(
        "secrets_live_on_a_tmpfs_0400_and_never_reach_disk_state",
        "mounts a tmpfs",
    ) {
        return;
    }
    use base64::Engine;
    let root = Root::new();
    let sup = root.open().await;
    let secret = "s3cr3t-value-do-not-leak";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let mut spec = sh("app", "exec sleep 1000", RestartPolicy::No);
    spec.files = vec![
        FileDelivery {
            target: "/run/secrets/db_password".into(),
            content_b64: b64.clone(),
            mode: 0o444,
            secret: true,
            uid: None,
            gid: None,
        },
        FileDelivery {
            target: "/etc/app/app.conf".into(),
            content_b64: base64::engine::general_purpose::STANDARD.encode("port=80\n"),
            mode: 0o640,
            secret: false,
            uid: None,
            gid: None,
        },
    ];
    apply(&sup, "p", vec![pod("app-1", "h", vec![spec])]).await;
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;

    let pod_dir = StateRoot::new(root.path()).pod("p", "app-1");
    let secrets = pod_dir.join("secrets");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let canonical = secrets.canonicalize().expect("canonical");
    assert!(
        mountinfo
            .lines()
            .any(|l| l.contains(&format!(" {} ", canonical.display())) && l.contains(" - tmpfs ")),
        "no tmpfs on {}",
        canonical.display()
    );
    let files = find_files(&secrets, "0-db_password");
    let [file] = files.as_slice() else {
        panic!("secret file not found: {files:?}")
    };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::read_to_string(file).expect("read"), secret);
    assert_eq!(
        std::fs::metadata(file).expect("meta").permissions().mode() & 0o7777,
        0o400
    );
    let conf = find_files(&pod_dir.join("configs"), "1-app.conf");
    assert_eq!(
        std::fs::metadata(&conf[0])
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777,
        0o640
    );

    // No state file on disk holds the secret, in plain or base64.
    for path in find_files(root.path(), "desired.json")
        .into_iter()
        .chain(find_files(root.path(), "launch.json"))
        .chain(find_files(root.path(), "observed.json"))
    {
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains(secret) && !text.contains(&b64),
            "{} holds the secret",
            path.display()
        );
    }

    remove(&sup, "p", true).await;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&canonical.display().to_string()),
        "the tmpfs outlived the pod"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_secrets_tmpfs_vanished_is_recreated_by_the_next_apply() {
    if !support::is_root(
        "a_pod_whose_secrets_tmpfs_vanished_is_recreated_by_the_next_apply",
        "mounts a tmpfs",
    ) {
        return;
    }
    use base64::Engine;
    let root = Root::new();
    let sup = root.open().await;
    let mut spec = sh("app", "exec sleep 1000", RestartPolicy::Always);
    spec.files = vec![FileDelivery {
        target: "/run/secrets/token".into(),
        content_b64: base64::engine::general_purpose::STANDARD.encode("tok"),
        mode: 0o400,
        secret: true,
        uid: None,
        gid: None,
    }];
    let pods = vec![pod("app-1", "h1", vec![spec])];
    apply(&sup, "p", pods.clone()).await;
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;

    // A reboot: the daemon, the shim and the container are gone, and so is the tmpfs.
    sup.detach().await;
    let rec = root.shim_record("p", "app-1", "app");
    for pid in [-(rec.pid as i32), rec.shim_pid as i32] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    while alive(rec.shim_pid, rec.shim_start) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secrets = StateRoot::new(root.path())
        .pod("p", "app-1")
        .join("secrets");
    nix::mount::umount2(&secrets, nix::mount::MntFlags::MNT_DETACH).expect("unmount");

    let sup = root.open().await;
    let s = status(&sup, "p").await;
    assert_eq!(
        s.pods[0].spec_hash, "",
        "the pod was not marked for recreation: {s:?}"
    );
    let r = apply(&sup, "p", pods).await;
    assert_eq!(r.replaced, ["app-1"]);
    wait_for(&sup, "p", "app-1", "app", "running", |c| {
        c.state == "running"
    })
    .await;
    let files = find_files(&secrets, "0-token");
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read_to_string(&files[0]).expect("read"), "tok");
    remove(&sup, "p", true).await;
}

/// One image layer: a busybox-static rootfs.
struct BusyboxImage(PathBuf);

impl compose_fleet_agent::supervisor::ImageSource for BusyboxImage {
    fn pull<'a>(
        &'a self,
        _reference: &'a str,
        _auth: &'a BTreeMap<String, compose_fleet_agent::proto::RegistryAuth>,
        _insecure: &'a [String],
    ) -> compose_fleet_agent::supervisor::seam::BoxFuture<
        'a,
        std::io::Result<compose_fleet_agent::supervisor::seam::PulledImage>,
    > {
        Box::pin(async move {
            Ok(compose_fleet_agent::supervisor::seam::PulledImage {
                digest: "busybox-layer".into(),
                layers: vec![self.0.clone()],
                ..Default::default()
            })
        })
    }
}

fn busybox_layer(dir: &Path) -> std::io::Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list-full")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join(applet);
        if !link.exists() && applet != "bin/busybox" {
            std::os::unix::fs::symlink("/bin/busybox", &link)?;
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_runtime_runs_supervised_pods() {
    let test = "isolated_runtime_runs_supervised_pods";
    if !support::is_root(test, "namespaces, cgroups") {
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!("skipped: {test} needs /bin/busybox (scripts/setup.sh installs it)");
        return;
    }
    let root = Root::new();
    let layer = root.path().join("layer");
    busybox_layer(&layer).expect("busybox layer");
    let runtime =
        compose_fleet_agent::supervisor::IsolatedRuntime::new(root.path(), Path::new(&agent()))
            .expect("runtime");
    let mut cfg = SupervisorConfig::new(
        root.path(),
        agent(),
        Arc::new(runtime),
        Arc::new(BusyboxImage(layer)),
    );
    cfg.log_max_files = 3;
    let sup = Supervisor::open(cfg).await.expect("open");
    let project = format!("svt-iso-{}", std::process::id());
    let mut web = sh(
        "web",
        "echo hello from $(hostname) as pid $$; exec sleep 1000",
        RestartPolicy::Always,
    );
    web.image = "busybox".into();
    web.stop_grace_period_ms = Some(1000);
    apply(&sup, &project, vec![pod("web-1", "h", vec![web])]).await;
    let c = wait_for(&sup, &project, "web-1", "web", "running", |c| {
        c.state == "running"
    })
    .await;

    // Its own pid namespace (the shell was pid 1), its pod's hostname, its logs captured.
    let deadline = Instant::now() + WAIT;
    let lines = loop {
        let lines = logs(&sup, &project, None).await;
        if !lines.is_empty() || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lines.first().map(|l| l.line.as_str()),
        Some("hello from web-1 as pid 1"),
        "{lines:?}"
    );

    let frames = call(
        &sup,
        Request::Exec(ExecRequest {
            project: project.clone(),
            pod: "web-1".into(),
            service: "web".into(),
            command: vec!["hostname".into()],
            env: BTreeMap::new(),
            stdin: false,
            tty: None,
        }),
    )
    .await;
    let (last, out) = frames.split_last().expect("frames");
    assert_eq!(last.ok, Some(Response::ExecExit { code: 0 }), "{frames:?}");
    let text: String = out
        .iter()
        .filter_map(|f| match &f.ok {
            Some(Response::ExecOutput { data, .. }) => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "web-1\n");

    // A crash inside is restarted by the policy, isolated again.
    let pid = c.pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let c = wait_for(&sup, &project, "web-1", "web", "a restart", |c| {
        c.restarts == 1 && c.state == "running"
    })
    .await;
    assert_ne!(c.pid, Some(pid));
    remove(&sup, &project, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_outlives_its_timeout_fails_and_is_killed() {
    let root = Root::new();
    let sup = root.open().await;
    let marker = root.path().join("probe-ran");
    let mut spec = sh("db", "exec sleep 1000", RestartPolicy::No);
    spec.healthcheck = Some(Healthcheck {
        test: vec![
            "CMD-SHELL".into(),
            format!("echo $$ >> {}; exec sleep 30", marker.display()),
        ],
        interval_ms: 200,
        timeout_ms: 300,
        retries: 1,
        start_period_ms: 0,
        start_interval_ms: 0,
    });
    apply(&sup, "p", vec![pod("db-1", "h", vec![spec])]).await;
    let c = wait_for(&sup, "p", "db-1", "db", "unhealthy", |c| {
        c.health.as_deref() == Some("unhealthy")
    })
    .await;
    assert_eq!(c.state, "running");
    remove(&sup, "p", true).await;
    // Every probe that timed out was killed, not left behind.
    let pids = std::fs::read_to_string(&marker).expect("the probe ran");
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| c.contains("sleep"))
            .unwrap_or(false);
        assert!(!alive, "probe {pid} outlived its timeout");
    }
}

/// The deploy lock (issue 12): a deployer whose lease expired and was granted to another finds
/// its writes (`ApplyPods`, `Remove`) refused, naming the lease that replaced it, and changes
/// nothing; the new holder's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_a_stale_fencing_number_changes_nothing() {
    use compose_fleet_agent::proto::{LockOwner, LockRequest};
    let root = Root::new();
    let sup = root.open().await;
    let lock = |pid: u32| {
        Request::Lock(LockRequest {
            project: "p".into(),
            owner: LockOwner {
                user: "ana".into(),
                machine: "laptop".into(),
                pid,
                started: 1,
            },
            ttl_secs: 1,
            fence: None,
        })
    };
    let fence_of = |frames: Vec<ResponseFrame>| match frames.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Lease { granted, lease }),
            ..
        }] => (*granted, lease.fence),
        other => panic!("lock answered {other:?}"),
    };
    let (granted, old) = fence_of(call(&sup, lock(1)).await);
    assert!(granted);
    assert!(!fence_of(call(&sup, lock(2)).await).0, "a live lease");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (granted, new) = fence_of(call(&sup, lock(2)).await);
    assert!(
        granted && new > old,
        "expired lease granted anew: {old} -> {new}"
    );

    let write = |fence| {
        Request::ApplyPods(ApplyPodsRequest {
            network: None,
            project: "p".into(),
            pods: vec![pod(
                "a-1",
                "h1",
                vec![sh("a", "exec sleep 1000", RestartPolicy::Always)],
            )],
            remove: Vec::new(),
            registry_auth: BTreeMap::new(),
            insecure_registries: Vec::new(),
            fence: Some(fence),
            start_first: Vec::new(),
            retire: Vec::new(),
        })
    };
    let refused = call(&sup, write(old)).await;
    let err = refused[0].err.as_ref().expect("a stale write is refused");
    assert!(
        err.message.contains(&format!("lease {new}")) && err.message.contains("ana@laptop"),
        "{err}"
    );
    let removal = call(
        &sup,
        Request::Remove {
            project: "p".into(),
            volumes: true,
            fence: Some(old),
        },
    )
    .await;
    assert!(removal[0].err.is_some(), "a stale remove is refused");
    assert!(status(&sup, "p").await.pods.is_empty(), "nothing changed");

    let applied = call(&sup, write(new)).await;
    assert!(applied[0].ok.is_some(), "{applied:?}");
    assert_eq!(status(&sup, "p").await.pods.len(), 1);
    remove(&sup, "p", true).await;
}

/// Release records (issue 12): written and listed through the supervisor, refused with a stale
/// fencing number, kept across the project's removal (`down`), pruned per project only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_records_survive_down_and_refuse_a_stale_fence() {
    use compose_fleet_agent::proto::{
        LockOwner, LockRequest, RecordRelease, ReleaseRecord, ReleaseStatus,
    };
    let root = Root::new();
    let sup = root.open().await;
    let record = |project: &str, number: u64, keep: u32, fence: Option<u64>| {
        Request::RecordRelease(RecordRelease {
            record: ReleaseRecord {
                project: project.into(),
                number,
                started: 1,
                owner: "ana@laptop".into(),
                status: ReleaseStatus::Succeeded,
                changed: vec!["a".into()],
                managed: vec!["a".into()],
                rollback_of: None,
                message: None,
                pods: vec![pod(
                    "a-1",
                    "h1",
                    vec![sh("a", "exec sleep 1000", RestartPolicy::Always)],
                )],
            },
            keep,
            fence,
        })
    };
    let listed = |frames: Vec<ResponseFrame>| match frames.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Releases { releases }),
            ..
        }] => releases
            .iter()
            .map(|r| (r.number, r.pods.len()))
            .collect::<Vec<_>>(),
        other => panic!("answered {other:?}"),
    };
    for n in 1..=3 {
        call(&sup, record("p", n, 2, None)).await;
    }
    call(&sup, record("q", 1, 2, None)).await;
    let releases = |project: &str, pods: bool| Request::Releases {
        project: project.into(),
        pods,
    };
    assert_eq!(
        listed(call(&sup, releases("p", true)).await),
        [(3, 1), (2, 1)]
    );
    assert_eq!(
        listed(call(&sup, releases("p", false)).await),
        [(3, 0), (2, 0)]
    );
    assert_eq!(listed(call(&sup, releases("q", false)).await), [(1, 0)]);

    // Under a lease, a record with another number is refused.
    let lock = Request::Lock(LockRequest {
        project: "p".into(),
        owner: LockOwner {
            user: "ana".into(),
            machine: "laptop".into(),
            pid: 1,
            started: 1,
        },
        ttl_secs: 30,
        fence: None,
    });
    let fence = match call(&sup, lock).await.as_slice() {
        [ResponseFrame {
            ok: Some(Response::Lease { lease, .. }),
            ..
        }] => lease.fence,
        other => panic!("lock answered {other:?}"),
    };
    let refused = call(&sup, record("p", 4, 2, Some(fence + 1))).await;
    assert!(refused[0].err.is_some(), "{refused:?}");
    assert_eq!(
        listed(call(&sup, releases("p", false)).await),
        [(3, 0), (2, 0)]
    );
    call(&sup, record("p", 4, 2, Some(fence))).await;

    // `down` removes the pods, not the history.
    remove(&sup, "p", true).await;
    assert_eq!(
        listed(call(&sup, releases("p", false)).await),
        [(4, 0), (3, 0)]
    );
}
