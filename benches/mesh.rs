//! `cargo bench --bench mesh`: TCP throughput and request/response latency between lab hosts on
//! one link — host to host (bare), pod to pod through a hand-made veth and bridge per host with
//! no rules at all (the ceiling for any bridged pod network on this kernel), the same with a
//! minimal conntrack table loaded during its runs (what tracking the forward path costs), pod to
//! pod routed by the agent (host-gw: plain pod-to-pod packets take the agent's eBPF fast path,
//! past the hosts' IP layer), the same pods with the server on a port of the range the agent
//! reserves for NATed connections (neither untracked nor on the fast path: the kernel's path
//! with conntrack, what host-gw cost before both), and pod to pod through the WireGuard mesh (forced with `mode: wireguard` on the same link, so only the path
//! differs). The client and server are this program's own threads, entered into the hosts' or
//! the pods' network namespaces (`setns`): the same code, socket buffers and direction on every
//! path. Each run sends `MESH_BENCH_MIB` MiB (default 512) one way, then 2,000 one-byte round
//! trips; `MESH_BENCH_RUNS` runs (default 5) of every path but the mesh are interleaved, and the
//! median is printed, with the median of each run's share of the bare run of its round (less
//! moved by other load on the machine than the ratio of medians). The bare and hand-made paths
//! use two lab hosts the agent never touched; the host-gw pods two others, whose host-to-host
//! figure (our table loaded) is printed too, and whose conntrack entries for the pods' flows are
//! counted afterwards. Needs root (the lab); prints figures, asserts nothing about time.

use std::collections::BTreeMap;
use std::fs::File;
use std::time::{Duration, Instant};

use compose_fleet::lab::{images, Lab};
use compose_fleet::proto::mesh::{add_mesh, Mode};
use compose_fleet::proto::net::{assign_subnets, host_networks, DEFAULT_FLEET_CIDR};
use compose_fleet::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
use compose_fleet::proto::{
    ApplyRequest, ContainerSpec, PodSpec, Request, Response, ResponseFrame,
};
use compose_fleet::ssh::{connect_agent, AgentBinary, OpenSsh, Options, SshTarget, Transport};
use nix::fcntl::{Flock, FlockArg};

const PROJECT: &str = "bench";
/// The pods only hold their namespaces; found by these exact command lines.
const SERVER_SLEEP: [&str; 2] = ["sleep", "36001"];
const CLIENT_SLEEP: [&str; 2] = ["sleep", "36002"];

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the mesh benchmark needs root (it starts a lab fleet)");
        return;
    }
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (mib, runs) = (env("MESH_BENCH_MIB", 512), env("MESH_BENCH_RUNS", 5).max(1));
    if let Err(e) = run(mib, runs as usize) {
        eprintln!("mesh bench: {e}");
        std::process::exit(2);
    }
}

fn run(mib: u64, runs: usize) -> Result<(), String> {
    let lock_file = File::create("/run/compose-fleet-lab.lock").map_err(|e| e.to_string())?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("cf-bench-lab")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let lab = Lab::new(&format!("bmesh-{}", std::process::id()), dir.path())
        .map_err(|e| e.to_string())?;
    let mut raw_pods = Vec::new();
    let result = (|| {
        lab.up(4, Some(1)).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let hosts = lab.hosts();
        let host_ns = |i: usize| std::path::Path::new("/run/netns").join(&hosts[i].name);
        // Hosts 3 and 4: bare and hand-made; hosts 1 and 2: the agent's pods.
        let raw = handmade(
            &hosts[2].name,
            &hosts[3].name,
            &hosts[2].address,
            &hosts[3].address,
        )?;
        raw_pods = raw.0.clone();
        let pods = rt.block_on(pods(&lab, Mode::HostGw))?;
        type Path3 = (std::path::PathBuf, std::path::PathBuf, String);
        let paths: Vec<(&str, Path3)> = vec![
            (
                "host to host (bare)",
                (
                    host_ns(2),
                    host_ns(3),
                    format!("{}:{PORT}", hosts[2].address),
                ),
            ),
            (
                "pod to pod, hand-made",
                (
                    std::path::Path::new("/run/netns").join(&raw.0[0]),
                    std::path::Path::new("/run/netns").join(&raw.0[1]),
                    format!("{}:{PORT}", raw.1),
                ),
            ),
            (
                "hand-made + conntrack",
                (
                    std::path::Path::new("/run/netns").join(&raw.0[0]),
                    std::path::Path::new("/run/netns").join(&raw.0[1]),
                    format!("{}:{PORT}", raw.1),
                ),
            ),
            (
                "host to host, our rules",
                (
                    host_ns(0),
                    host_ns(1),
                    format!("{}:{PORT}", hosts[0].address),
                ),
            ),
            (
                "pod to pod, host-gw",
                (
                    pods.server_ns.clone(),
                    pods.client_ns.clone(),
                    format!("{}:{PORT}", pods.server),
                ),
            ),
            // The same pods, the server on a port of the range reserved for NATed connections:
            // tracked, as every pod-to-pod connection was before `prerouting_raw`.
            (
                "host-gw, tracked port",
                (
                    pods.server_ns.clone(),
                    pods.client_ns.clone(),
                    format!("{}:{TRACKED_PORT}", pods.server),
                ),
            ),
        ];
        // Warm up (ARP, routes), then the runs, interleaved so that the machine's load falls
        // on every path alike.
        for (_, (s, c, ip)) in &paths {
            measure(s.clone(), c.clone(), ip, 8)?;
        }
        let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); paths.len()];
        let tracked_hosts = [hosts[2].name.as_str(), hosts[3].name.as_str()];
        for _ in 0..runs {
            for (i, (name, (s, c, ip))) in paths.iter().enumerate() {
                let with_conntrack = name.ends_with("+ conntrack");
                if with_conntrack {
                    for h in tracked_hosts {
                        nft_in(h, CONNTRACK_TABLE)?;
                    }
                }
                let f = measure(s.clone(), c.clone(), ip, mib);
                if with_conntrack {
                    for h in tracked_hosts {
                        nft_in(h, "delete table ip bench_conntrack")?;
                    }
                }
                figures[i].push(f?);
            }
        }
        // Every flow between the two pods, on the server's host (none if untracked).
        let tracked = conntrack_between(&hosts[0].name, &pods.server, &pods.client);
        rt.block_on(pods.remove())?;
        let mesh = rt.block_on(pods_figures(&lab, Mode::Wireguard, mib, runs))?;
        println!(
            "{:<24} {:>10} {:>9} {:>8} {:>10} {:>8} {:>10} {:>10}   ({runs} runs of {mib} MiB, median; all runs MiB/s)",
            "path (one link)", "TCP MiB/s", "% bare", "paired", "CPU us/MiB", "CPU %", "RTT p50 us", "RTT p99 us"
        );
        println!(
            "(paired: median over the rounds of each run against that round's bare run; CPU %: bare's CPU per MiB over the path's)"
        );
        let bare = &figures[0];
        for (i, (name, _)) in paths.iter().enumerate() {
            print_row(name, &figures[i], bare, i > 0);
        }
        // The mesh runs after the rounds: medians only.
        print_row("pod to pod, mesh", &mesh, bare, false);
        println!(
            "conntrack entries of the host-gw pods' flows (port {PORT}) on the server's host: {}",
            tracked.map_or_else(|e| format!("unknown ({e})"), |n| n.to_string())
        );
        // Which WireGuard the mesh row measured: kernel WireGuard where the kernel has it.
        let device = std::fs::read_to_string(
            lab.dir()
                .join("hosts")
                .join(&lab.hosts()[0].name)
                .join("state/mesh-device"),
        )
        .unwrap_or_else(|_| "unknown".into());
        println!("mesh device: {}", device.trim());
        Ok(())
    })();
    for ns in raw_pods {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
    }
    let _ = lab.down();
    result
}

/// The median of each figure over the runs.
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        mibps: mid(|f| f.mibps),
        cpu_us_per_mib: mid(|f| f.cpu_us_per_mib),
        p50_us: mid(|f| f.p50_us),
        p99_us: mid(|f| f.p99_us),
    }
}

/// A pod network made by hand with `ip`, as plain as one can be: in each of two lab hosts a
/// bridge (`10.212.N.1/24`) and one namespace joined to it by a veth, holding `10.212.N.2/32`
/// with a default route via the bridge, each host routing the other's /24 via its address. No
/// nftables, no conntrack: the same hops as host-gw (two veths and two bridges more than bare).
/// Returns the two namespaces' names and the server's address (in the first).
fn handmade(h1: &str, h2: &str, a1: &str, a2: &str) -> Result<(Vec<String>, String), String> {
    let ip = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    };
    let mut names = Vec::new();
    for (n, host) in [(1, h1), (2, h2)] {
        let pod = format!("{host}-raw");
        let (gw, addr) = (format!("10.212.{n}.1"), format!("10.212.{n}.2/32"));
        ip(&["netns", "add", &pod])?;
        names.push(pod.clone());
        ip(&["-n", host, "link", "add", "rawbr0", "type", "bridge"])?;
        ip(&[
            "-n",
            host,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "rawbr0",
        ])?;
        ip(&["-n", host, "link", "set", "rawbr0", "up"])?;
        ip(&[
            "-n", host, "link", "add", "rawp", "type", "veth", "peer", "name", "eth0", "netns",
            &pod,
        ])?;
        ip(&["-n", host, "link", "set", "rawp", "master", "rawbr0", "up"])?;
        ip(&["-n", &pod, "link", "set", "lo", "up"])?;
        ip(&["-n", &pod, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &pod, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &pod,
            "route",
            "add",
            &format!("{gw}/32"),
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ip(&["-n", &pod, "route", "add", "default", "via", &gw])?;
        let status = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                host,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .map_err(|e| format!("sysctl: {e}"))?;
        if !status.success() {
            return Err(format!("enabling forwarding in {host}"));
        }
    }
    ip(&["-n", h1, "route", "add", "10.212.2.0/24", "via", a2])?;
    ip(&["-n", h2, "route", "add", "10.212.1.0/24", "via", a1])?;
    Ok((names, "10.212.1.2".into()))
}

/// A table that turns conntrack on for everything a host forwards, receives and sends, as the
/// smallest stateful firewall would.
const CONNTRACK_TABLE: &str = "table ip bench_conntrack {
  chain forward { type filter hook forward priority filter; ct state established,related accept; }
  chain input { type filter hook input priority filter; ct state established,related accept; }
  chain output { type filter hook output priority filter; ct state established,related accept; }
}";

/// Runs `nft -f -` with `script` in lab host `host`'s namespace.
fn nft_in(host: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", host, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft: no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("nft: {e}"))?;
    let status = child.wait().map_err(|e| format!("nft: {e}"))?;
    if !status.success() {
        return Err(format!("nft -f in {host} failed: {script}"));
    }
    Ok(())
}

/// How many conntrack entries of lab host `host` are flows between addresses `a` and `b` on
/// [`PORT`].
fn conntrack_between(host: &str, a: &str, b: &str) -> Result<usize, String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", host, "cat", "/proc/net/nf_conntrack"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let (ab, ba) = (format!(" src={a} dst={b} "), format!(" src={b} dst={a} "));
    // The flows to the server's usual port (those to the tracked port are tracked by design).
    let port = format!("port={PORT} ");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| (l.contains(&ab) || l.contains(&ba)) && l.contains(&port))
        .count())
}

/// One path's row; `paired`: its runs were interleaved with the bare ones, so each is also
/// compared with the bare run of its round (throughput, and bare's CPU per MiB over this path's:
/// the share of the bare link this path would reach where the CPU is the limit).
fn print_row(name: &str, runs: &[Figures], bare: &[Figures], paired: bool) {
    let f = median(runs);
    let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.mibps)).collect();
    let share = |of: fn(&Figures, &Figures) -> f64| {
        if !paired || runs.len() != bare.len() {
            return format!("{:>8}", "-");
        }
        let mut shares: Vec<f64> = runs.iter().zip(bare).map(|(r, b)| of(r, b)).collect();
        shares.sort_by(f64::total_cmp);
        format!("{:>7.0}%", 100.0 * shares[shares.len() / 2])
    };
    println!(
        "{name:<24} {:>10.1} {:>8.0}% {} {:>10.0} {} {:>10.1} {:>10.1}   [{}]",
        f.mibps,
        100.0 * f.mibps / median(bare).mibps,
        share(|r, b| r.mibps / b.mibps),
        f.cpu_us_per_mib,
        share(|r, b| b.cpu_us_per_mib / r.cpu_us_per_mib),
        f.p50_us,
        f.p99_us,
        all.join(" ")
    );
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The CPU time of every `ksoftirqd/N` thread so far (`/proc/PID/schedstat`, nanoseconds).
fn softirq_cpu() -> Duration {
    static PIDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let pids = PIDS.get_or_init(|| {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.starts_with("ksoftirqd/"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    let ns: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    mibps: f64,
    /// CPU time per MiB moved: the sending and receiving threads (which run the whole path's
    /// softirq work in their own context when the machine is not too busy) and the ksoftirqd
    /// threads (where it goes when it is). Unlike throughput it hardly moves with other load on
    /// the machine.
    cpu_us_per_mib: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `f` on a new thread inside the network namespace of process `pid` (or of `/run/netns/NAME`).
fn in_netns<T: Send + 'static>(
    ns: std::path::PathBuf,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<std::io::Result<T>> {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = File::open(&ns)?;
        // SAFETY: setns on this thread only, with a namespace file we hold open.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
}

/// The benchmark's server port, and one in the range the agent reserves for NATed pod-to-pod
/// connections (61000-65535), whose flows its `prerouting_raw` chain leaves tracked.
const PORT: u16 = 5001;
const TRACKED_PORT: u16 = 61001;

/// One transfer and the round trips, between a server in `server_ns` at `server` (address and
/// port) and a client in `client_ns`.
fn measure(
    server_ns: std::path::PathBuf,
    client_ns: std::path::PathBuf,
    server: &str,
    mib: u64,
) -> Result<Figures, String> {
    use std::io::{Read, Write};
    const ROUND_TRIPS: usize = 2000;
    let addr: std::net::SocketAddr = server.parse().map_err(|e| format!("{server}: {e}"))?;
    let server = in_netns(server_ns, move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", addr.port()))?;
        // Bulk: read to the end, answer one byte.
        let (mut c, _) = listener.accept()?;
        let cpu = thread_cpu();
        let mut buf = vec![0u8; 1 << 16];
        while c.read(&mut buf)? > 0 {}
        let cpu = thread_cpu() - cpu;
        c.write_all(b"k")?;
        // Round trips: echo each byte.
        let (mut c, _) = listener.accept()?;
        c.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while c.read(&mut b)? == 1 {
            c.write_all(&b)?;
        }
        Ok(cpu)
    });
    std::thread::sleep(Duration::from_millis(300));
    let client = in_netns(client_ns, move || {
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        let chunk = vec![0u8; 1 << 20];
        let (cpu, softirq) = (thread_cpu(), softirq_cpu());
        let started = Instant::now();
        for _ in 0..mib {
            c.write_all(&chunk)?;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        let mut k = [0u8; 1];
        c.read_exact(&mut k)?;
        let secs = started.elapsed().as_secs_f64();
        let cpu = (thread_cpu() - cpu) + softirq_cpu().saturating_sub(softirq);
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        c.set_nodelay(true)?;
        let mut times = Vec::with_capacity(ROUND_TRIPS);
        let mut b = [7u8; 1];
        for _ in 0..ROUND_TRIPS {
            let t = Instant::now();
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
            times.push(t.elapsed());
        }
        times.sort();
        Ok((secs, cpu, times))
    });
    let (secs, client_cpu, times) = client
        .join()
        .map_err(|_| "the client panicked".to_string())?
        .map_err(|e| format!("client: {e}"))?;
    let server_cpu = server
        .join()
        .map_err(|_| "the server panicked".to_string())?
        .map_err(|e| format!("server: {e}"))?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Figures {
        mibps: mib as f64 / secs,
        cpu_us_per_mib: us(client_cpu + server_cpu) / mib as f64,
        p50_us: us(times[times.len() / 2]),
        p99_us: us(times[times.len() * 99 / 100]),
    })
}

/// The pid of the process whose command line is exactly `argv` (a pod's `sleep N`).
fn pid_of(argv: &[&str]) -> Result<u32, String> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    for entry in std::fs::read_dir("/proc").map_err(|e| e.to_string())? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == want) {
            return Ok(pid);
        }
    }
    Err(format!("no process {argv:?}"))
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

/// The agent's server pod on host 1 and client pod on host 2.
struct Pods {
    server_ns: std::path::PathBuf,
    client_ns: std::path::PathBuf,
    server: String,
    client: String,
    targets: Vec<SshTarget>,
    agent: AgentBinary,
    remove: Vec<Request>,
}

impl Pods {
    /// Removes both pods (the last pod takes our table and the bridge with it).
    async fn remove(self) -> Result<(), String> {
        for (t, r) in self.targets.iter().zip(self.remove) {
            rpc(t, &self.agent, r).await?;
        }
        Ok(())
    }
}

/// `runs` runs (median) between the agent's pods joined as `mode` says.
async fn pods_figures(
    lab: &Lab,
    mode: Mode,
    mib: u64,
    runs: usize,
) -> Result<Vec<Figures>, String> {
    let pods = pods(lab, mode).await?;
    let (s, c, ip) = (
        pods.server_ns.clone(),
        pods.client_ns.clone(),
        format!("{}:{PORT}", pods.server),
    );
    let figures = tokio::task::spawn_blocking(move || {
        // Warm up (ARP, the mesh's handshake), then measure.
        measure(s.clone(), c.clone(), &ip, 8)?;
        (0..runs)
            .map(|_| measure(s.clone(), c.clone(), &ip, mib))
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| e.to_string())?;
    pods.remove().await?;
    figures
}

/// A server pod on host 1 and a client pod on host 2, joined as `mode` says.
async fn pods(lab: &Lab, mode: Mode) -> Result<Pods, String> {
    let fleet = compose_fleet::inventory::load(&lab.inventory()).map_err(|e| format!("{e:?}"))?;
    // Only hosts 1 and 2 run the agent's pods.
    let targets: Vec<SshTarget> = SshTarget::all(&fleet).into_iter().take(2).collect();
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
        .filter(|h| targets.iter().any(|t| t.name == h.name))
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
        apply(&t1.name, vec![pod("server-1", &shell, &SERVER_SLEEP)]),
    )
    .await?;
    rpc(
        t2,
        &agent,
        apply(&t2.name, vec![pod("client-1", &shell, &CLIENT_SLEEP)]),
    )
    .await?;
    let server = pod_ip(t1, &agent, "server-1").await?;
    let client = pod_ip(t2, &agent, "client-1").await?;
    // As `up` does: each host learns the other's pods and their networks (the isolation rules
    // let a pod reach a pod of another host only on a network the two share).
    let map = ServiceMap {
        project: PROJECT.into(),
        services: [
            (&t1.name, "server-1", &server),
            (&t2.name, "client-1", &client),
        ]
        .into_iter()
        .map(|(host, pod, addr)| Service {
            name: pod.trim_end_matches("-1").into(),
            endpoint_mode: EndpointMode::Dnsrr,
            vip: None,
            networks: vec![],
            aliases: vec![],
            container_name: None,
            replicas: vec![Endpoint {
                replica: 1,
                pod: pod.into(),
                host: host.clone(),
                addr: addr.parse().expect("an IPv4 pod address"),
                healthy: true,
            }],
        })
        .collect(),
    };
    for t in [t1, t2] {
        rpc(t, &agent, Request::Services(map.clone())).await?;
    }
    let ns = |argv: &[&str]| -> Result<std::path::PathBuf, String> {
        Ok(std::path::PathBuf::from(format!(
            "/proc/{}/ns/net",
            pid_of(argv)?
        )))
    };
    let (server_ns, client_ns) = (ns(&SERVER_SLEEP)?, ns(&CLIENT_SLEEP)?);
    let remove = [t1, t2].iter().map(|t| apply(&t.name, vec![])).collect();
    Ok(Pods {
        server_ns,
        client_ns,
        server,
        client,
        targets: targets.clone(),
        agent,
        remove,
    })
}
