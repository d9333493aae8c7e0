//! The agent end to end on a lab host, through the real protocol over SSH: `Apply` runs an
//! isolated pod of two containers from the lab registry's images, `Status`, `Exec`, the daemon
//! killed with SIGKILL and re-adopting its containers, a one-pod change, `Remove`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use compose_fleet::lab::images::{self, HTTPD_INDEX};
use compose_fleet::proto::{
    ApplyReport, ApplyRequest, ContainerSpec, ExecRequest, PodSpec, Request, Response,
    StatusReport, Stream,
};
use compose_fleet::ssh::{AgentBinary, SshTarget};

use crate::support::{last_ok, rpc, Lab};

const PROJECT: &str = "e2e";
/// How long anything may take before the test gives up (not a timing assertion).
const DEADLINE: Duration = crate::support::AGENT_DEADLINE;

fn container(service: &str, image: &str, command: Option<&[&str]>) -> ContainerSpec {
    ContainerSpec {
        service: service.into(),
        replica: 1,
        image: image.into(),
        command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
        ..ContainerSpec::default()
    }
}

fn pods(registry: &str, other_hash: &str) -> Vec<PodSpec> {
    let (httpd, shell) = (images::httpd_image(registry), images::shell_image(registry));
    vec![
        PodSpec {
            name: "web-1".into(),
            hostname: "web-1".into(),
            spec_hash: "web-v1".into(),
            containers: vec![
                container("web", &httpd, None),
                container(
                    "probe",
                    &shell,
                    Some(&[
                        "sh",
                        "-c",
                        "while true; do wget -q -O /dev/null http://127.0.0.1:80/; sleep 1; done",
                    ]),
                ),
            ],
            ports: Vec::new(),
            network: Default::default(),
        },
        PodSpec {
            name: "other-1".into(),
            hostname: "other-1".into(),
            spec_hash: other_hash.into(),
            containers: vec![container(
                "other",
                &shell,
                Some(&["sleep", &format!("36{}", other_hash.len())]),
            )],
            ports: Vec::new(),
            network: Default::default(),
        },
    ]
}

fn apply(registry: &str, other_hash: &str) -> Request {
    Request::Apply(ApplyRequest {
        project: PROJECT.into(),
        pods: pods(registry, other_hash),
        registry_auth: BTreeMap::new(),
        insecure_registries: vec![registry.into()],
        network: None,
    })
}

async fn status(target: &SshTarget, agent: &AgentBinary) -> StatusReport {
    match last_ok(
        &rpc(
            target,
            agent,
            Request::Status {
                project: Some(PROJECT.into()),
            },
        )
        .await,
    ) {
        Response::Status(s) => s,
        other => panic!("unexpected reply to Status: {other:?}"),
    }
}

/// `(pod, service) → (pid, started_at)` of running containers.
type Running = BTreeMap<(String, String), (u32, u64)>;

fn running(report: &StatusReport) -> Running {
    report
        .pods
        .iter()
        .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
        .filter(|(_, c)| c.state == "running")
        .filter_map(|(p, c)| Some(((p.name.clone(), c.service.clone()), (c.pid?, c.started_at?))))
        .collect()
}

/// Polls `Status` until all `want` containers run; panics with the last report at the deadline.
async fn wait_running(target: &SshTarget, agent: &AgentBinary, want: usize) -> Running {
    let start = Instant::now();
    loop {
        let report = status(target, agent).await;
        let run = running(&report);
        if run.len() == want {
            return run;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{want} containers not running within {DEADLINE:?}: {report:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn exec(target: &SshTarget, agent: &AgentBinary, pod: &str, argv: &[&str]) -> (String, i32) {
    let frames = rpc(
        target,
        agent,
        Request::Exec(ExecRequest {
            project: PROJECT.into(),
            pod: pod.into(),
            service: "probe".into(),
            command: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            stdin: false,
            tty: None,
        }),
    )
    .await;
    let mut stdout = String::new();
    let mut code = None;
    for f in &frames {
        if let Some(err) = &f.err {
            panic!("exec {argv:?} failed: {err}");
        }
        match &f.ok {
            Some(Response::ExecOutput {
                stream: Stream::Stdout,
                data,
            }) => stdout.push_str(data),
            Some(Response::ExecExit { code: c }) => code = Some(*c),
            _ => {}
        }
    }
    (stdout, code.expect("an exit code"))
}

/// The start time of a host process (`/proc/<pid>/stat` field 22); the lab shares our pid
/// namespace.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The image store's blobs on the host: name → (inode, modification time).
fn blobs(lab: &Lab) -> BTreeMap<String, (u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let dir = lab
        .dir()
        .join("hosts")
        .join(lab.host(1))
        .join("state/images/blobs/sha256");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            ))
        })
        .collect()
}

fn kill_daemon(lab: &Lab) -> u32 {
    let pid_file = lab
        .dir()
        .join("hosts")
        .join(lab.host(1))
        .join("run/compose-fleet/agent.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pid_file.display()))
        .trim()
        .parse()
        .expect("a pid in the daemon's pid file");
    let status = lab
        .faults()
        .exec(&lab.host(1), &["kill".into(), "-9".into(), pid.to_string()])
        .expect("lab exec")
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
    pid
}

#[test]
fn the_agent_runs_isolated_pods_and_survives_its_own_kill() {
    let Some(lab) = Lab::up("the_agent_runs_isolated_pods_and_survives_its_own_kill", 1) else {
        return;
    };
    let fleet = compose_fleet::inventory::load(&lab.inventory()).expect("lab inventory");
    let target = SshTarget::all(&fleet).remove(0);
    let agent = AgentBinary::locate(None).expect("the agent binary");
    let registry = lab.registry();
    let runtime = crate::support::runtime();
    runtime.block_on(async {
        let (target, agent) = (&target, &agent);

        // Apply: two pods, three containers from the lab registry.
        let report = match last_ok(&rpc(target, agent, apply(&registry, "other-v1")).await) {
            Response::Applied(r) => r,
            other => panic!("unexpected reply to Apply: {other:?}"),
        };
        assert_eq!(
            report,
            ApplyReport {
                created: vec!["other-1".into(), "web-1".into()],
                changes: report.changes,
                ..ApplyReport::default()
            }
        );
        let before = wait_running(target, agent, 3).await;
        eprintln!("running: {before:?}");

        // The two containers of a pod talk over 127.0.0.1.
        let (page, code) = exec(
            target,
            agent,
            "web-1",
            &["wget", "-qO-", "http://127.0.0.1/"],
        )
        .await;
        assert_eq!((page.as_str(), code), (HTTPD_INDEX, 0));

        // Isolation: the pod's hostname, the container's own pid 1.
        let (hostname, code) = exec(target, agent, "web-1", &["hostname"]).await;
        assert_eq!((hostname.trim(), code), ("web-1", 0));
        let (cmdline, code) = exec(target, agent, "web-1", &["cat", "/proc/1/cmdline"]).await;
        assert_eq!(code, 0);
        assert_eq!(
            cmdline.split('\0').take(2).collect::<Vec<_>>(),
            ["sh", "-c"],
            "pid 1 of the probe container is its own command: {cmdline:?}"
        );
        assert!(cmdline.contains("wget"), "{cmdline:?}");
        // The host's processes are invisible: only the container's few processes are in /proc.
        let (procs, code) = exec(
            target,
            agent,
            "web-1",
            &["sh", "-c", "ls -d /proc/[0-9]* | wc -l"],
        )
        .await;
        assert_eq!(code, 0);
        let procs: u32 = procs.trim().parse().expect("a count");
        assert!(procs < 10, "{procs} processes visible in the container");

        let ticks: BTreeMap<_, _> = before
            .iter()
            .map(|(k, (pid, _))| (k.clone(), start_ticks(*pid).expect("the process exists")))
            .collect();

        // kill -9 of the daemon: the next rpc starts a new one, which re-adopts every container.
        let old_daemon = kill_daemon(&lab);
        let gone = Instant::now();
        while start_ticks(old_daemon).is_some() && gone.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = wait_running(target, agent, 3).await;
        assert_eq!(
            after, before,
            "same pids and start times after the daemon's restart"
        );
        for (k, (pid, _)) in &after {
            assert_eq!(
                start_ticks(*pid),
                ticks.get(k).copied(),
                "{k:?} is the same process"
            );
        }

        // A one-pod change replaces only that pod; its images are already here: no download.
        let blobs_before = blobs(&lab);
        let report = match last_ok(&rpc(target, agent, apply(&registry, "other-v2")).await) {
            Response::Applied(r) => r,
            other => panic!("unexpected reply to Apply: {other:?}"),
        };
        assert_eq!(
            report,
            ApplyReport {
                replaced: vec!["other-1".into()],
                unchanged: vec!["web-1".into()],
                changes: report.changes,
                ..ApplyReport::default()
            }
        );
        assert_eq!(
            blobs(&lab),
            blobs_before,
            "the second pull downloaded nothing"
        );
        let replaced = wait_running(target, agent, 3).await;
        let key = |pod: &str, service: &str| (pod.to_string(), service.to_string());
        for s in ["web", "probe"] {
            assert_eq!(replaced[&key("web-1", s)], before[&key("web-1", s)]);
        }
        let old_other = before[&key("other-1", "other")].0;
        assert_ne!(replaced[&key("other-1", "other")].0, old_other);
        assert_ne!(
            start_ticks(old_other),
            ticks.get(&key("other-1", "other")).copied(),
            "the replaced pod's process is gone"
        );

        // Remove: every pod goes, and its processes with it.
        match last_ok(
            &rpc(
                target,
                agent,
                Request::Remove {
                    project: PROJECT.into(),
                    volumes: true,
                    fence: None,
                },
            )
            .await,
        ) {
            Response::Removed { mut pods } => {
                pods.sort();
                assert_eq!(pods, ["other-1", "web-1"]);
            }
            other => panic!("unexpected reply to Remove: {other:?}"),
        }
        let start = Instant::now();
        let alive = || {
            replaced
                .values()
                .filter(|(pid, _)| start_ticks(*pid).is_some())
                .count()
        };
        while alive() > 0 && start.elapsed() < DEADLINE {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(alive(), 0, "processes of removed pods still run");
        assert!(status(target, agent).await.pods.is_empty());
    });
}
