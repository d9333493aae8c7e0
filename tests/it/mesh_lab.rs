//! The WireGuard mesh on a two-site lab (two L2 segments that only route through the root
//! namespace), through the agent's protocol as `up` drives it: each host reports its public key,
//! the CLI's pure functions give every host its subnet and its mesh peers, a pod on one site
//! reaches a pod on the other, the wire between the sites carries only WireGuard (UDP to the
//! mesh port, never a pod address), the mesh comes back after the agent is killed, and removing
//! the last pod removes the device, its routes and our table. And `up` itself, on the same kind
//! of lab, deploys a compose file whose services land on different sites and reach each other.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use compose_fleet::lab::images::HTTPD_INDEX;
use compose_fleet::proto::mesh::{add_mesh, DeviceKind, Link, Mode, DEFAULT_PORT};
use compose_fleet::proto::net::{assign_subnets, host_networks, Ipv4Net, DEFAULT_FLEET_CIDR};
use compose_fleet::proto::{ApplyRequest, HostFacts, HostNetwork, PodSpec, Request, Response};
use compose_fleet::ssh::{connect_agent, AgentBinary, OpenSsh, Options, SshTarget, Transport};

use crate::network_lab::{exec, host_state, pod, running_ip, PROJECT};
use crate::support::{last_ok, rpc, Lab};

/// What crossed one link, by kind.
#[derive(Debug, Default)]
struct Seen {
    /// UDP datagrams to or from the mesh port.
    mesh: usize,
    /// IPv4 packets with a pod address in their header: must never cross between sites.
    plain: Vec<String>,
}

/// Every frame on one interface of the root namespace, read with our own `AF_PACKET` socket.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Seen>,
}

impl Capture {
    fn start(interface: &str) -> Capture {
        let name = std::ffi::CString::new(interface).unwrap();
        // SAFETY: a plain C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {interface}");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: binds our socket to a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::SeqCst) {
                // SAFETY: reads into our buffer.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                classify(&buf[..n as usize], &mut seen);
            }
            seen
        });
        Capture { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("capture thread")
    }
}

fn classify(frame: &[u8], seen: &mut Seen) {
    // Ethernet II; IPv4 only (the lab and the mesh are IPv4).
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &frame[14..];
    let (src, dst) = (
        std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    if DEFAULT_FLEET_CIDR.contains(src) || DEFAULT_FLEET_CIDR.contains(dst) {
        seen.plain.push(format!("{src} -> {dst} proto {}", ip[9]));
        return;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] == 17 && ip.len() >= header + 4 {
        let sport = u16::from_be_bytes([ip[header], ip[header + 1]]);
        let dport = u16::from_be_bytes([ip[header + 2], ip[header + 3]]);
        if sport == DEFAULT_PORT || dport == DEFAULT_PORT {
            seen.mesh += 1;
        }
    }
}

async fn hello(target: &SshTarget, agent: &AgentBinary) -> HostFacts {
    let ssh = OpenSsh::new(&Options::default()).unwrap();
    let session = ssh.connect(target).await.unwrap();
    let (_, report) = connect_agent(&session, &target.name, agent, Duration::from_secs(60))
        .await
        .unwrap();
    report.facts
}

/// The WireGuard the agent must pick on this machine: the kernel's when the kernel makes a
/// `wireguard` link (probed in a throwaway network namespace), else its userspace device. The
/// development and CI kernels have none.
fn expected_device() -> DeviceKind {
    let made = std::process::Command::new("unshare")
        .args(["-n", "ip", "link", "add", "cfprobe", "type", "wireguard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if made {
        DeviceKind::Kernel
    } else {
        DeviceKind::Userspace
    }
}

fn run_in(lab: &Lab, host: &str, argv: &[&str]) -> String {
    let out = lab
        .faults()
        .exec(
            host,
            &argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("lab exec")
        .output()
        .expect("runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pods_on_two_sites_reach_each_other_through_the_mesh_and_nothing_plain_crosses() {
    let Some(lab) = Lab::up_on_sites(
        "pods_on_two_sites_reach_each_other_through_the_mesh_and_nothing_plain_crosses",
        2,
        2,
    ) else {
        return;
    };
    let (targets, agent) = lab.agents();
    let hosts = lab.host_names();
    let before: Vec<String> = hosts.iter().map(|h| host_state(&lab, h)).collect();
    // Host 1's veth in the root namespace: every packet between it and the other site.
    let site_octet = lab
        .address(&hosts[0])
        .split('.')
        .nth(2)
        .unwrap()
        .to_string();
    let wire = format!("cflab{site_octet}-1");
    let registry = lab.registry();
    let (httpd_image, shell_image) = (lab.httpd_image(), lab.shell_image());

    let runtime = crate::support::runtime();
    runtime.block_on(async {
        let (h1, h2) = (&targets[0], &targets[1]);
        let agent = &agent;
        // What `up` does: keys from Hello, subnets and mesh peers from the pure functions.
        let mut keys = BTreeMap::new();
        for t in &targets {
            let facts = hello(t, agent).await;
            let mesh = facts.mesh.expect("the agent reports a WireGuard key");
            keys.insert(t.name.clone(), mesh.public_key);
        }
        let reported: BTreeMap<String, Option<Ipv4Net>> =
            hosts.iter().map(|h| (h.clone(), None)).collect();
        let subnets = assign_subnets(DEFAULT_FLEET_CIDR, &reported).expect("subnets");
        let addresses = hosts
            .iter()
            .map(|h| (h.clone(), lab.address(h).parse().unwrap()))
            .collect();
        let mut networks = host_networks(DEFAULT_FLEET_CIDR, &subnets, &addresses);
        add_mesh(&mut networks, Mode::Auto, &keys);
        let apply = |pods: Vec<PodSpec>, network: HostNetwork| {
            Request::Apply(ApplyRequest {
                project: PROJECT.into(),
                pods,
                registry_auth: BTreeMap::new(),
                insecure_registries: vec![registry.clone()],
                network: Some(network),
            })
        };
        let web = pod("web-1", &httpd_image, None, vec![]);
        let client = pod("client-1", &shell_image, Some(&["sleep", "3600"]), vec![]);
        for (t, me, pods) in [(h1, &hosts[0], vec![web]), (h2, &hosts[1], vec![client])] {
            let r = last_ok(&rpc(t, agent, apply(pods, networks[me].clone())).await);
            assert!(
                matches!(r, Response::Applied(ref a) if a.warnings.is_empty()),
                "{r:?}"
            );
        }
        let web_ip = running_ip(h1, agent, "web-1").await;
        let client_ip = running_ip(h2, agent, "client-1").await;
        // As `up` does: each host learns the other's pods and their networks.
        crate::network_lab::share_map(
            &targets,
            agent,
            &[
                (&hosts[0], "web-1", &web_ip),
                (&hosts[1], "client-1", &client_ip),
            ],
        )
        .await;

        // The peer is on the other site: the mesh, with the MTU of a 1500-byte link.
        let link = run_in(&lab, &hosts[0], &["ip", "-o", "link", "show", "cfwg0"]);
        assert!(link.contains("mtu 1420"), "{link}");
        let routes = run_in(&lab, &hosts[0], &["ip", "-4", "route", "show"]);
        assert!(
            routes.contains(&format!("{} dev cfwg0", subnets[&hosts[1]])),
            "{routes}"
        );

        let capture = Capture::start(&wire);
        let url = format!("http://{web_ip}/");
        let (page, code) = exec(h2, agent, "client-1", &["wget", "-qO-", &url]).await;
        assert_eq!((page.as_str(), code), (HTTPD_INDEX, 0));
        let (_, code) = exec(
            h2,
            agent,
            "client-1",
            &["ping", "-c", "2", "-W", "5", &web_ip],
        )
        .await;
        assert_eq!(code, 0, "ping across the mesh");
        let seen = capture.stop();
        assert!(seen.mesh > 0, "no WireGuard datagram seen on {wire}");
        assert!(
            seen.plain.is_empty(),
            "pod addresses crossed between sites in the clear: {:?}",
            &seen.plain[..seen.plain.len().min(5)]
        );

        // Both hosts report the pair as a mesh link with a recent handshake, and which
        // WireGuard runs it: on a kernel without WireGuard, the userspace device.
        let device = expected_device();
        let facts = hello(h2, agent).await;
        let mesh = facts.mesh.expect("mesh facts");
        assert_eq!(mesh.device, Some(device), "the device the agent picked");
        let peers = mesh.peers;
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].link, Link::Wireguard);
        assert_eq!(peers[0].health(), "ok", "{peers:?}");
        // ...and `hosts` shows it: each host's subnet, the peer's mode and health.
        let out = lab
            .cli()
            .args(["hosts", "--format", "json"])
            .output()
            .expect("runs compose-fleet hosts");
        assert!(out.status.success(), "{}", crate::support::describe(&out));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let row = |i: usize| &rows[i];
        assert_eq!(row(0)["pod_subnet"], subnets[&hosts[0]].to_string());
        let peer = &row(1)["peers"][0];
        assert_eq!(peer["host"], hosts[0].as_str());
        assert_eq!(peer["mode"], "wireguard");
        assert_eq!(peer["health"], "ok", "{peer}");
        assert_eq!(peer["device"], device.as_str(), "{peer}");
        let text = lab.cli().arg("hosts").output().expect("runs");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains(&format!("{} wireguard ok (", hosts[0]))
                && text.contains(&format!("s, {})", device.as_str())),
            "{text}"
        );

        // The agent on host 1 dies: a userspace device goes with it (a kernel one stays); the
        // next connection starts a new daemon, which brings the mesh back for the pods that
        // kept running.
        let pid_file = lab
            .dir()
            .join("hosts")
            .join(&hosts[0])
            .join("run/compose-fleet/agent.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("the daemon's pid file");
        let killed = run_in(
            &lab,
            &hosts[0],
            &["sh", "-c", &format!("kill -9 {} && echo ok", pid.trim())],
        );
        assert_eq!(killed.trim(), "ok");
        let mut gone = false;
        for _ in 0..if device == DeviceKind::Userspace {
            50
        } else {
            0
        } {
            if !run_in(&lab, &hosts[0], &["ip", "-o", "link", "show"]).contains("cfwg0") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if device == DeviceKind::Userspace {
            assert!(gone, "the userspace device outlived its agent");
        }
        running_ip(h1, agent, "web-1").await;
        let (page, code) = exec(h2, agent, "client-1", &["wget", "-qO-", &url]).await;
        assert_eq!((page.as_str(), code), (HTTPD_INDEX, 0), "after the restart");

        // Removing the last pods removes the device, its routes and our table.
        for (t, me) in [(h1, &hosts[0]), (h2, &hosts[1])] {
            let r = last_ok(&rpc(t, agent, apply(vec![], networks[me].clone())).await);
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
            let r = last_ok(
                &rpc(
                    t,
                    agent,
                    apply(
                        vec![],
                        HostNetwork {
                            peers: vec![],
                            mesh: None,
                            ..networks[me].clone()
                        },
                    ),
                )
                .await,
            );
            assert!(matches!(r, Response::Applied(_)), "{r:?}");
        }
    });
    let after: Vec<String> = hosts.iter().map(|h| host_state(&lab, h)).collect();
    assert_eq!(after, before, "each host's network is as before");
}

#[test]
fn up_joins_services_on_two_sites_through_the_mesh() {
    let Some(lab) = Lab::up_on_sites("up_joins_services_on_two_sites_through_the_mesh", 2, 2)
    else {
        return;
    };
    let compose = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mesh/compose.yaml");
    let cli = |args: &[&str]| {
        lab.cli()
            .arg("-f")
            .arg(&compose)
            .args(args)
            .env("REGISTRY", lab.registry())
            .output()
            .expect("runs the CLI")
    };
    let out = cli(&["up"]);
    assert!(
        out.status.success(),
        "up: {}",
        crate::support::describe(&out)
    );
    let out = cli(&["ps", "--format", "json"]);
    assert!(
        out.status.success(),
        "ps: {}",
        crate::support::describe(&out)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let web = rows
        .iter()
        .find(|r| r["service"] == "web")
        .expect("web runs");
    let web_ip = web["ip"].as_str().expect("web has an address").to_string();
    let (targets, agent) = lab.agents();
    let runtime = crate::support::runtime();
    runtime.block_on(async {
        let url = format!("http://{web_ip}/");
        let (page, code) = exec(&targets[1], &agent, "client-1", &["wget", "-qO-", &url]).await;
        assert_eq!((page.as_str(), code), (HTTPD_INDEX, 0));
    });
    let link = run_in(&lab, &lab.host(1), &["ip", "-o", "link", "show", "cfwg0"]);
    assert!(link.contains("cfwg0"), "site 1 runs the mesh: {link}");
    let out = cli(&["down"]);
    assert!(
        out.status.success(),
        "down: {}",
        crate::support::describe(&out)
    );
    let links = run_in(&lab, &lab.host(1), &["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("cfwg0"),
        "down removes the mesh device: {links}"
    );
}
