//! `cargo bench --bench mesh`: TCP throughput and ICMP round trip between two lab hosts on one
//! link — host to host (bare), pod to pod routed (host-gw), and pod to pod through the userspace
//! WireGuard mesh (forced with `mode: wireguard` on the same link, so only the path differs).
//! Throughput is busybox `dd | nc` of `MESH_BENCH_MIB` MiB (default 200) into a `nc -l` that
//! discards it; the round trip is busybox `ping -A` (20 echoes). Needs root (the lab); prints
//! figures, asserts nothing about time.

use std::collections::BTreeMap;
use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use compose_fleet::lab::{images, Lab};
use compose_fleet::proto::mesh::{add_mesh, Mode};
use compose_fleet::proto::net::{assign_subnets, host_networks, DEFAULT_FLEET_CIDR};
use compose_fleet::proto::{
    ApplyRequest, ContainerSpec, ExecRequest, PodSpec, Request, Response, ResponseFrame, Stream,
};
use compose_fleet::ssh::{connect_agent, AgentBinary, OpenSsh, Options, SshTarget, Transport};
use nix::fcntl::{Flock, FlockArg};

const PROJECT: &str = "bench";
const PORT: &str = "5001";
/// The server's shell loop: one `nc -l` per connection, everything discarded.
const SERVE: &str = "while true; do nc -l -p 5001 > /dev/null; done";

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the mesh benchmark needs root (it starts a lab fleet)");
        return;
    }
    let mib: u64 = std::env::var("MESH_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    if let Err(e) = run(mib) {
        eprintln!("mesh bench: {e}");
        std::process::exit(2);
    }
}

fn run(mib: u64) -> Result<(), String> {
    let lock_file = File::create("/run/compose-fleet-lab.lock").map_err(|e| e.to_string())?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("cf-bench-lab")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let lab = Lab::new(&format!("bmesh-{}", std::process::id()), dir.path())
        .map_err(|e| e.to_string())?;
    let result = (|| {
        lab.up(2, Some(1)).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        println!(
            "{:<22} {:>12} {:>14}",
            "path (one link)", "TCP MiB/s", "RTT avg ms"
        );
        let bare = bare(&lab, mib)?;
        print_row("host to host (bare)", bare);
        for (name, mode) in [
            ("pod to pod, host-gw", Mode::HostGw),
            ("pod to pod, mesh", Mode::Wireguard),
        ] {
            let figures = rt.block_on(pods(&lab, mode, mib))?;
            print_row(name, figures);
        }
        Ok(())
    })();
    let _ = lab.down();
    result
}

fn print_row(name: &str, (mibps, rtt): (f64, f64)) {
    println!("{name:<22} {mibps:>12.1} {rtt:>14.3}");
}

/// `dd`'s own figure: "N bytes (...) copied, S seconds, ..." → MiB/s.
fn throughput(dd_stderr: &str) -> Result<f64, String> {
    let line = dd_stderr
        .lines()
        .find(|l| l.contains("copied"))
        .ok_or_else(|| format!("no dd summary in {dd_stderr:?}"))?;
    let bytes: f64 = line
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| format!("no byte count in {line:?}"))?;
    let secs: f64 = line
        .split(", ")
        .find(|p| p.ends_with("seconds"))
        .and_then(|p| p.trim_end_matches(" seconds").trim().parse().ok())
        .ok_or_else(|| format!("no seconds in {line:?}"))?;
    Ok(bytes / secs / (1 << 20) as f64)
}

/// busybox ping's "round-trip min/avg/max = a/b/c ms" → b.
fn rtt(ping: &str) -> Result<f64, String> {
    ping.lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no round trip in {ping:?}"))
}

fn client_script(server: &str, mib: u64) -> String {
    format!(
        "dd if=/dev/zero bs=1048576 count={mib} 2>/tmp/dd.txt | nc {server} {PORT}; cat /tmp/dd.txt >&2"
    )
}

fn ping_script(server: &str) -> String {
    format!("ping -A -c 20 {server}")
}

/// Host to host over the lab link, in the hosts' own namespaces.
fn bare(lab: &Lab, mib: u64) -> Result<(f64, f64), String> {
    let hosts = lab.hosts();
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let sh = |host: &str, script: &str| -> Result<Command, String> {
        lab.exec(
            host,
            &["busybox".into(), "sh".into(), "-c".into(), script.into()],
        )
        .map_err(|e| e.to_string())
    };
    let mut server = sh(&h1.name, "busybox nc -l -p 5001 > /dev/null")?
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let script = client_script(&h1.address, mib)
        .replace("dd ", "busybox dd ")
        .replace("| nc", "| busybox nc");
    let out = sh(&h2.name, &script)?.output().map_err(|e| e.to_string())?;
    let _ = server.kill();
    let _ = server.wait();
    let tput = throughput(&String::from_utf8_lossy(&out.stderr))?;
    let out = sh(&h2.name, &format!("busybox {}", ping_script(&h1.address)))?
        .output()
        .map_err(|e| e.to_string())?;
    Ok((tput, rtt(&String::from_utf8_lossy(&out.stdout))?))
}

async fn rpc(
    target: &SshTarget,
    agent: &AgentBinary,
    request: Request,
) -> Result<Vec<ResponseFrame>, String> {
    let ssh = OpenSsh::new(&Options::default()).map_err(|e| e.to_string())?;
    let session = ssh.connect(target).await.map_err(|e| e.to_string())?;
    let (mut client, _) = connect_agent(&session, &target.name, agent, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    client.send(1, request).await.map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(300), client.recv())
            .await
            .map_err(|_| "the agent did not answer".to_string())?
            .map_err(|e| e.to_string())?;
        if let Some(err) = &frame.err {
            return Err(format!("{}: {err}", target.name));
        }
        let more = frame.more;
        frames.push(frame);
        if !more {
            return Ok(frames);
        }
    }
}

async fn hello_key(target: &SshTarget, agent: &AgentBinary) -> Result<String, String> {
    let ssh = OpenSsh::new(&Options::default()).map_err(|e| e.to_string())?;
    let session = ssh.connect(target).await.map_err(|e| e.to_string())?;
    let (_, report) = connect_agent(&session, &target.name, agent, Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    report
        .facts
        .mesh
        .map(|m| m.public_key)
        .ok_or_else(|| format!("{} reports no WireGuard key", target.name))
}

fn pod(name: &str, image: &str, command: &[&str]) -> PodSpec {
    PodSpec {
        name: name.into(),
        hostname: name.into(),
        spec_hash: format!("{name}-v1"),
        containers: vec![ContainerSpec {
            service: name.trim_end_matches("-1").into(),
            replica: 1,
            image: image.into(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            ..ContainerSpec::default()
        }],
        ports: vec![],
        network: Default::default(),
    }
}

/// (stdout, stderr) of `sh -c script` in a pod.
async fn exec(
    target: &SshTarget,
    agent: &AgentBinary,
    pod: &str,
    script: &str,
) -> Result<(String, String), String> {
    let frames = rpc(
        target,
        agent,
        Request::Exec(ExecRequest {
            project: PROJECT.into(),
            pod: pod.into(),
            service: pod.trim_end_matches("-1").into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
        }),
    )
    .await?;
    let (mut out, mut err) = (String::new(), String::new());
    for f in frames {
        if let Some(Response::ExecOutput { stream, data }) = f.ok {
            match stream {
                Stream::Stdout => out.push_str(&data),
                _ => err.push_str(&data),
            }
        }
    }
    Ok((out, err))
}

async fn pod_ip(target: &SshTarget, agent: &AgentBinary, pod: &str) -> Result<String, String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let frames = rpc(
            target,
            agent,
            Request::Status {
                project: Some(PROJECT.into()),
            },
        )
        .await?;
        if let Some(Response::Status(s)) = frames.last().and_then(|f| f.ok.clone()) {
            if let Some(p) = s.pods.iter().find(|p| p.name == pod) {
                if p.containers.iter().all(|c| c.state == "running") {
                    if let Some(ip) = &p.ip {
                        return Ok(ip.clone());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("{pod} did not start"))
}

/// A server pod on host 1 and a client pod on host 2, joined as `mode` says.
async fn pods(lab: &Lab, mode: Mode, mib: u64) -> Result<(f64, f64), String> {
    let fleet = compose_fleet::inventory::load(&lab.inventory()).map_err(|e| format!("{e:?}"))?;
    let targets = SshTarget::all(&fleet);
    let agent = AgentBinary::locate(None).map_err(|e| e.to_string())?;
    let registry = lab.registry().ok_or("the lab has no registry")?;
    let shell = images::shell_image(&registry);
    let mut keys = BTreeMap::new();
    for t in &targets {
        keys.insert(t.name.clone(), hello_key(t, &agent).await?);
    }
    let reported = targets.iter().map(|t| (t.name.clone(), None)).collect();
    let subnets = assign_subnets(DEFAULT_FLEET_CIDR, &reported).map_err(|e| e.to_string())?;
    let addresses = fleet
        .hosts
        .iter()
        .map(|h| {
            (
                h.name.clone(),
                h.address.parse().expect("lab addresses are IPv4"),
            )
        })
        .collect();
    let mut networks = host_networks(DEFAULT_FLEET_CIDR, &subnets, &addresses);
    add_mesh(&mut networks, mode, &keys);
    let apply = |host: &str, pods: Vec<PodSpec>| {
        Request::Apply(ApplyRequest {
            project: PROJECT.into(),
            pods,
            registry_auth: BTreeMap::new(),
            insecure_registries: vec![registry.clone()],
            network: Some(networks[host].clone()),
        })
    };
    let (t1, t2) = (&targets[0], &targets[1]);
    rpc(
        t1,
        &agent,
        apply(
            &t1.name,
            vec![pod("server-1", &shell, &["sh", "-c", SERVE])],
        ),
    )
    .await?;
    rpc(
        t2,
        &agent,
        apply(&t2.name, vec![pod("client-1", &shell, &["sleep", "3600"])]),
    )
    .await?;
    let server = pod_ip(t1, &agent, "server-1").await?;
    pod_ip(t2, &agent, "client-1").await?;
    // Warm up (ARP, the mesh's handshake), then measure.
    exec(t2, &agent, "client-1", &ping_script(&server)).await?;
    let (_, dd) = exec(t2, &agent, "client-1", &client_script(&server, mib)).await?;
    let (ping, _) = exec(t2, &agent, "client-1", &ping_script(&server)).await?;
    let figures = (throughput(&dd)?, rtt(&ping)?);
    for t in [t1, t2] {
        rpc(t, &agent, apply(&t.name, vec![])).await?;
    }
    Ok(figures)
}
