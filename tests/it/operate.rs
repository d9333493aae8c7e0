//! Operating a deployed project on a 2-host lab fleet (`tests/fixtures/operate`): `logs` merges
//! both hosts' lines with `service.replica@host` prefixes and `logs -f` keeps following both until
//! interrupted; `exec` returns the command's exit code and feeds it stdin; `stop`/`start`/
//! `restart` act in place; secrets and configs arrive as files (the secret 0400, never printed,
//! a rotation replacing only its pod); `pull` fetches the images; `down --volumes` leaves nothing
//! of the project on any host: no process, cgroup, mount, netns, nftables rule or volume.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{describe, Lab};

const PROJECT: &str = "opslab";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/operate/compose.yaml")
}

/// `compose-fleet -i LAB -f FIXTURE ARGS…`, ready to run.
fn command(lab: &Lab, args: &[&str]) -> Command {
    let mut cmd = lab.cli();
    cmd.arg("-f")
        .arg(fixture())
        .args(args)
        .env("REGISTRY", lab.registry())
        .env("OPS_TOKEN", "s3cret-1")
        .env_remove("NO_COLOR");
    cmd
}

fn cli(lab: &Lab, args: &[&str]) -> Output {
    command(lab, args).output().expect("runs the CLI")
}

/// `ps --format json` rows keyed `service.replica`.
fn ps(lab: &Lab) -> BTreeMap<String, Value> {
    let out = cli(lab, &["ps", "--format", "json"]);
    assert!(out.status.success(), "ps failed: {}", describe(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ps prints JSON");
    rows.into_iter()
        .map(|r| {
            (
                format!("{}.{}", r["service"].as_str().unwrap_or("?"), r["replica"]),
                r,
            )
        })
        .collect()
}

/// `tick N` lines by prefix (`ticker.1@host`), from `logs` output.
fn ticks(text: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        let Some((prefix, rest)) = line.split_once(" | ") else {
            continue;
        };
        if let Some(n) = rest
            .trim()
            .strip_prefix("tick ")
            .and_then(|n| n.parse().ok())
        {
            out.entry(prefix.trim().to_string()).or_default().push(n);
        }
    }
    out
}

/// What is left of the project on a host: processes (any on the machine naming the project's
/// state dir), cgroups, mounts, nftables rules for its port, its state directory.
fn leftovers(lab: &Lab, host: &str) -> Vec<String> {
    let run = |script: &str| -> String {
        let out = lab
            .faults()
            .exec(host, &["sh".into(), "-c".into(), script.into()])
            .expect("lab exec")
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut left = Vec::new();
    let procs = run(&format!(
        "{} || true",
        crate::support::project_processes_script(PROJECT)
    ));
    if !procs.is_empty() {
        left.push(format!("processes: {procs}"));
    }
    let cgroups = run(&format!(
        "find /sys/fs/cgroup -maxdepth 4 -name '*{PROJECT}*' 2>/dev/null || true"
    ));
    if !cgroups.is_empty() {
        left.push(format!("cgroups: {cgroups}"));
    }
    let mounts = run(&format!("grep '{PROJECT}' /proc/self/mountinfo || true"));
    if !mounts.is_empty() {
        left.push(format!("mounts (pod netns, rootfs, secrets): {mounts}"));
    }
    let nft = run("nft list ruleset 2>/dev/null | grep -n 8089 || true");
    if !nft.is_empty() {
        left.push(format!("nftables rules: {nft}"));
    }
    let dir = run(&format!(
        "ls -d /var/lib/compose-fleet/projects/{PROJECT} 2>/dev/null || true"
    ));
    if !dir.is_empty() {
        left.push(format!("state and volumes: {dir}"));
    }
    left
}

#[test]
fn logs_follow_exec_stop_start_and_down_leaves_nothing() {
    let Some(lab) = Lab::up("logs_follow_exec_stop_start_and_down_leaves_nothing", 2) else {
        return;
    };
    let out = cli(&lab, &["up", "--wait", "--json"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    // `--json`: every stdout line is an event.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["event"].is_string() && v["time_ms"].is_u64(), "{line}");
    }
    let rows = ps(&lab);
    let hosts: BTreeSet<String> = ["ticker.1", "ticker.2"]
        .iter()
        .map(|k| rows[*k]["host"].as_str().expect("host").to_string())
        .collect();
    assert_eq!(hosts.len(), 2, "one ticker per host: {rows:?}");

    // 1. `logs`: both replicas' lines, prefixed, in order per replica.
    std::thread::sleep(Duration::from_millis(800));
    let out = cli(&lab, &["logs", "--tail", "3", "ticker"]);
    assert!(out.status.success(), "logs failed: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\x1b'),
        "no colors when not a terminal: {text}"
    );
    let before = ticks(&text);
    let expected: BTreeSet<String> = ["ticker.1", "ticker.2"]
        .iter()
        .map(|k| format!("{k}@{}", rows[*k]["host"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        before.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{text}"
    );
    for (prefix, ns) in &before {
        assert_eq!(ns.len(), 3, "--tail 3 for {prefix}: {text}");
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{prefix}: {ns:?}");
    }
    let out = cli(
        &lab,
        &["logs", "-t", "--no-log-prefix", "--tail", "1", "web"],
    );
    assert!(out.status.success(), "logs web failed: {}", describe(&out));

    // 2. `logs -f` follows both hosts: new ticks from each, until interrupted.
    let mut child = command(&lab, &["logs", "-f", "--tail", "0", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut followed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !(followed.len() == 2 && followed.values().all(|v| v.len() >= 3))
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            for (k, v) in ticks(&line) {
                followed.entry(k).or_default().extend(v);
            }
        }
    }
    // A redeploy replaces both tickers while `logs -f` runs: it follows the new containers.
    let out = command(&lab, &["up", "--wait"])
        .env("TICK", "tock")
        .output()
        .expect("runs up");
    assert!(out.status.success(), "up TICK=tock: {}", describe(&out));
    let mut tocks = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && tocks.len() < 2 {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            if let Some((prefix, rest)) = line.split_once(" | ") {
                if rest.trim().starts_with("tock ") {
                    tocks.insert(prefix.trim().to_string());
                }
            }
        }
    }
    assert_eq!(
        tocks.len(),
        2,
        "logs -f shows both new tickers' lines after a redeploy: {tocks:?}"
    );
    // SIGINT, as Ctrl-C: `logs -f` stops and exits 0.
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = child.wait().expect("logs -f exits");
    assert_eq!(
        followed.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "followed lines from both hosts: {followed:?}"
    );
    for (prefix, ns) in &followed {
        let last_before = before[prefix].last().copied().unwrap_or(0);
        assert!(
            ns.iter().all(|n| *n > last_before) && ns.len() >= 3,
            "{prefix}: new lines only, as they come: {ns:?} after {last_before}"
        );
    }
    assert!(status.success(), "logs -f after SIGINT: {status:?}");
    // Back to `tick` for what follows.
    let out = cli(&lab, &["up", "--wait"]);
    assert!(out.status.success(), "up: {}", describe(&out));

    // 3. `exec`: the exit code, output, stdin, a chosen replica.
    let out = cli(
        &lab,
        &[
            "exec",
            "ticker.2",
            "sh",
            "-c",
            "echo on $(hostname); exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("on "));
    let out = cli(&lab, &["exec", "-T", "web", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut child = command(&lab, &["exec", "ticker", "sh", "-c", "cat; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs exec");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hello\nfrom stdin\n").expect("writes");
    drop(stdin);
    let out = child.wait_with_output().expect("exec ends");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nfrom stdin\n");
    // On a terminal (util-linux `script` gives the CLI one): the command gets a terminal too.
    if Command::new("script").arg("--version").output().is_ok() {
        let cmd = command(
            &lab,
            &[
                "exec",
                "ticker",
                "sh",
                "-c",
                "test -t 0 && test -t 1 && echo on-a-tty",
            ],
        );
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdin(Stdio::null())
            .output()
            .expect("runs script");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("on-a-tty"),
            "{}",
            describe(&out)
        );
    } else {
        eprintln!("no `script`: the exec-on-a-terminal check is skipped");
    }
    let out = cli(&lab, &["exec", "nope", "true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // Secrets and configs: files in the pod, the secret 0400, its content never printed; a
    // rotated secret replaces only the pod that uses it.
    let text = |args: &[&str]| -> String {
        let out = cli(&lab, args);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        text(&["exec", "web", "cat", "/run/secrets/token"]),
        "s3cret-1"
    );
    assert_eq!(
        text(&["exec", "web", "stat", "-c", "%a", "/run/secrets/token"]).trim(),
        "400"
    );
    assert_eq!(
        text(&["exec", "web", "cat", "/etc/motd"]),
        "hello from a config"
    );
    let out = command(&lab, &["up", "--json"])
        .env("OPS_TOKEN", "s3cret-2")
        .output()
        .expect("runs up");
    assert!(
        out.status.success(),
        "up with a new secret: {}",
        describe(&out)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cret"), "a secret was printed: {all}");
    let changed: Vec<String> = all
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| matches!(e["event"].as_str(), Some("create" | "replace" | "remove")))
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap_or(""),
                e["pod"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(changed, ["replace web-1"], "{all}");
    let out = command(&lab, &["exec", "web", "cat", "/run/secrets/token"])
        .env("OPS_TOKEN", "s3cret-2")
        .output()
        .expect("runs exec");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "s3cret-2");
    // Back to the first secret, for what follows.
    let out = cli(&lab, &["up"]);
    assert!(out.status.success(), "up: {}", describe(&out));

    // 4. `stop`, `start`, `restart`, in place.
    let out = cli(&lab, &["stop", "ticker"]);
    assert!(out.status.success(), "stop failed: {}", describe(&out));
    let rows = ps(&lab);
    for k in ["ticker.1", "ticker.2"] {
        assert_eq!(rows[k]["state"], "exited", "{k} after stop: {}", rows[k]);
    }
    assert_eq!(rows["web.1"]["state"], "running", "web untouched");
    let web_pid = rows["web.1"]["pid"].clone();
    let out = cli(&lab, &["start", "ticker"]);
    assert!(out.status.success(), "start failed: {}", describe(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = ps(&lab);
        if rows["ticker.1"]["state"] == "running" && rows["ticker.2"]["state"] == "running"
            || Instant::now() > deadline
        {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rows["ticker.1"]["state"], "running", "{rows:?}");
    assert_eq!(rows["web.1"]["pid"], web_pid, "web untouched");
    let out = cli(&lab, &["restart", "web"]);
    assert!(out.status.success(), "restart failed: {}", describe(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = ps(&lab);
        let pid = &rows["web.1"]["pid"];
        if rows["web.1"]["state"] == "running" && !pid.is_null() && *pid != web_pid {
            break;
        }
        assert!(Instant::now() < deadline, "web not restarted: {rows:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A second `up` leaves what runs alone (the restarted pod's spec did not change).
    let out = cli(&lab, &["up", "--json"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"event\":\"create\""),
        "{}",
        describe(&out)
    );
    // `up` starts what `stop` stopped (as docker compose's does), and only that.
    let web_pid = ps(&lab)["web.1"]["pid"].clone();
    let out = cli(&lab, &["stop", "ticker"]);
    assert!(out.status.success(), "stop failed: {}", describe(&out));
    let out = cli(&lab, &["up", "--wait", "--json"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let restarted: BTreeSet<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "restart")
        .filter_map(|e| e["pod"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        restarted,
        ["ticker-1", "ticker-2"].map(String::from).into(),
        "{text}"
    );
    let rows = ps(&lab);
    for k in ["ticker.1", "ticker.2"] {
        assert_eq!(rows[k]["state"], "running", "{k} after up: {}", rows[k]);
    }
    assert_eq!(rows["web.1"]["pid"], web_pid, "web untouched");
    let out = cli(&lab, &["pull"]);
    assert!(out.status.success(), "pull failed: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pulled"),
        "{}",
        describe(&out)
    );

    // 5. `down --volumes`: nothing of the project is left anywhere.
    let volume = format!("/var/lib/compose-fleet/projects/{PROJECT}/volumes");
    let web_host = ps(&lab)["web.1"]["host"]
        .as_str()
        .expect("web host")
        .to_string();
    let has_volume = lab
        .faults()
        .exec(&web_host, &["ls".into(), volume.clone()])
        .expect("lab exec")
        .output()
        .expect("runs");
    assert!(
        String::from_utf8_lossy(&has_volume.stdout).contains("data"),
        "the named volume exists before down: {}",
        describe(&has_volume)
    );
    // The probe sees the project while it runs (so that an empty list below means something).
    let running = leftovers(&lab, &web_host);
    for what in ["processes", "cgroups", "mounts", "nftables", "state"] {
        assert!(
            running.iter().any(|l| l.starts_with(what)),
            "no {what} seen while the project runs: {running:#?}"
        );
    }
    let out = cli(&lab, &["down", "--volumes", "--remove-orphans"]);
    assert!(out.status.success(), "down failed: {}", describe(&out));
    for host in lab.host_names() {
        let left = leftovers(&lab, &host);
        assert!(left.is_empty(), "{host} after down: {left:#?}");
    }
}

/// GET `url` from the root namespace, retried for a few seconds (a DNAT rule may trail `up`).
fn fetch(url: &str) -> String {
    for _ in 0..50 {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "2", url])
            .output()
            .expect("runs curl");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{url} did not answer");
}

#[test]
fn the_sidecar_and_replicas_examples_deploy_and_answer() {
    let Some(lab) = Lab::up("the_sidecar_and_replicas_examples_deploy_and_answer", 3) else {
        return;
    };
    let example = |name: &str, args: &[&str]| -> Output {
        let file =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}/compose.yaml"));
        lab.cli()
            .arg("-f")
            .arg(file)
            .args(args)
            .env("REGISTRY", lab.registry())
            .output()
            .expect("runs the CLI")
    };
    let index = compose_fleet::lab::images::HTTPD_INDEX;

    // Replicas: one per host, every host answers on the published port.
    let out = example("replicas", &["up", "--wait"]);
    assert!(out.status.success(), "up replicas: {}", describe(&out));
    for host in lab.host_names() {
        let url = format!("http://{}:8088/", lab.address(&host));
        assert_eq!(fetch(&url), index, "{url}");
    }

    // Sidecar: each pod's probe reaches its web on 127.0.0.1 (one network namespace).
    let out = example("sidecar", &["up", "--wait"]);
    assert!(out.status.success(), "up sidecar: {}", describe(&out));
    let out = example("sidecar", &["ps", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("ps JSON");
    for r in &rows {
        assert_eq!(r["state"], "running", "{r}");
    }
    let web_host = rows
        .iter()
        .find(|r| r["service"] == "web")
        .and_then(|r| r["host"].as_str())
        .expect("a web replica")
        .to_string();
    assert_eq!(
        fetch(&format!("http://{}:8090/", lab.address(&web_host))),
        index
    );
    // The probe checks every 5 s and its first check may come before httpd listens: wait for
    // a check after `up --wait` returned (web is healthy then).
    let start = Instant::now();
    loop {
        let out = example("sidecar", &["logs", "probe"]);
        let logs = String::from_utf8_lossy(&out.stdout);
        let answered = |replica: &str| {
            logs.lines()
                .any(|l| l.starts_with(replica) && l.ends_with("web answered on 127.0.0.1"))
        };
        if answered("probe.1@") && answered("probe.2@") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "each probe reaches its web on 127.0.0.1: {}",
            describe(&out)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    for name in ["replicas", "sidecar"] {
        let out = example(name, &["down"]);
        assert!(out.status.success(), "down {name}: {}", describe(&out));
    }
}
