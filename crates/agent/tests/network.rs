//! Pod networking on the real kernel (needs root), inside a throwaway network namespace that
//! plays the host: bridge, veths, addresses and routes made over netlink, our nftables table
//! checked against `nft -j list ruleset`, traffic between pods, to published ports (from the host
//! and from a neighbour) and out through masquerade, and everything gone with the last pod.
//!
//! `ip` and `nft` are used here only to look at what the agent did; the agent never runs them.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compose_fleet_agent::network::kernel::{NetKernel, Netlink, PodLink};
use compose_fleet_agent::network::{Network, BRIDGE};
use compose_fleet_agent::proto::{HostNetwork, PeerSubnet, PortMapping};
use compose_fleet_agent::runtime::pod;

fn is_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: {test} needs root (network namespaces, netlink, nftables)");
    false
}

fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: {test} needs {tool} to inspect the kernel's state");
    }
    ok
}

/// Runs `f` on a new thread that first enters a fresh network namespace: the "host". Its child
/// processes (`ip`, `nft`) inherit it; nothing touches the real host's network.
fn in_fresh_host<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run(&["ip", "link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `f` on a thread inside the namespace bound at `netns`.
fn in_ns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(netns).expect("opens the netns file");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run(args)).unwrap_or_else(|e| panic!("{args:?} is not JSON: {e}"))
}

/// What `ip` and `nft` show of the host namespace, for before/after comparisons.
fn host_state() -> String {
    let links: Vec<String> = json(&["ip", "-j", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap_or("").to_string())
        .collect();
    // Name and addresses only: a bridge's operstate follows its ports' carrier, with a delay.
    let addrs: Vec<String> = run(&["ip", "-4", "-br", "addr", "show"])
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", cols[0], cols.get(2..).unwrap_or(&[]).join(" "))
        })
        .collect();
    format!(
        "links {links:?}\naddrs {addrs:?}\nroutes {}\nnft {}",
        run(&["ip", "-4", "route", "show"]),
        run(&["nft", "list", "ruleset"])
    )
}

/// The rules of chain `chain` of our table, as nft's JSON expression lists.
fn nft_rules(ruleset: &serde_json::Value, chain: &str) -> Vec<serde_json::Value> {
    ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["table"] == "compose_fleet" && r["chain"] == chain && r["family"] == "ip")
        .map(|r| r["expr"].clone())
        .collect()
}

fn port(published: u16, target: u16, protocol: &str, host_ip: Option<&str>) -> PortMapping {
    PortMapping {
        host_ip: host_ip.map(str::to_string),
        published,
        target,
        protocol: protocol.into(),
    }
}

/// A TCP server in namespace `netns` answering one connection with `reply` and the peer's
/// address it saw.
fn serve_tcp(
    netns: PathBuf,
    bind: &'static str,
    reply: &'static str,
) -> std::sync::mpsc::Receiver<SocketAddr> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (peer_tx, peer_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        in_ns(&netns, move || {
            let listener = TcpListener::bind(bind).expect("binds in the namespace");
            ready_tx.send(()).unwrap();
            let accepted = listener.accept();
            // Closed before the test hears of the peer: its next server binds the same port.
            drop(listener);
            if let Ok((mut s, peer)) = accepted {
                let _ = s.write_all(reply.as_bytes());
                drop(s);
                let _ = peer_tx.send(peer);
            }
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    peer_rx
}

fn fetch(addr: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

struct Sandboxes(Vec<PathBuf>);

impl Drop for Sandboxes {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = pod::remove(dir);
        }
    }
}

#[test]
fn pods_get_addresses_routes_nat_and_published_ports_and_leave_nothing_behind() {
    let test = "pods_get_addresses_routes_nat_and_published_ports_and_leave_nothing_behind";
    if !is_root(test) || !have("nft", test) || !have("ip", test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let sandboxes = Sandboxes(
            ["web", "dns", "neighbour"]
                .iter()
                .map(|n| tmp.path().join("pods").join(n))
                .collect(),
        );
        let ns = |i: usize| -> PathBuf {
            pod::create(&sandboxes.0[i], "p")
                .expect("creates a pod sandbox")
                .net
        };
        let (web_ns, dns_ns, neighbour_ns) = (ns(0), ns(1), ns(2));

        // The host's LAN: a bridge with the host's own address and a neighbour (another "host").
        let kernel = Netlink;
        let lan: compose_fleet_agent::proto::net::Ipv4Net = "10.99.0.0/24".parse().unwrap();
        kernel
            .ensure_bridge("lan0", "10.99.0.1".parse().unwrap(), lan)
            .expect("LAN bridge");
        kernel
            .attach_pod(&PodLink {
                netns: neighbour_ns.clone(),
                host_if: "lan-nb".into(),
                pod_if: "eth0".into(),
                bridge: "lan0".into(),
                addr: "10.99.0.2".parse().unwrap(),
                subnet: lan,
                gateway: "10.99.0.1".parse().unwrap(),
            })
            .expect("neighbour link");
        let before = host_state();

        let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
        let warnings = net
            .configure(&HostNetwork {
                fleet: "10.213.0.0/16".parse().unwrap(),
                subnet: "10.213.1.0/24".parse().unwrap(),
                peers: vec![PeerSubnet {
                    host: "h2".into(),
                    subnet: "10.213.2.0/24".parse().unwrap(),
                    via: "10.99.0.2".parse().unwrap(),
                }],
                mesh: None,
            })
            .expect("configures");
        assert!(warnings.is_empty(), "{warnings:?}");

        let started = Instant::now();
        let web = net
            .attach("p", "web-1", &web_ns, &[port(8080, 80, "tcp", None)])
            .unwrap()
            .unwrap();
        let first = started.elapsed();
        let started = Instant::now();
        let dns = net
            .attach(
                "p",
                "dns-1",
                &dns_ns,
                &[port(5353, 53, "udp", Some("10.99.0.1"))],
            )
            .unwrap()
            .unwrap();
        let second = started.elapsed();
        eprintln!("attach: first pod {first:?} (bridge, forwarding), second {second:?}");
        assert_eq!(web, "10.213.1.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(dns, "10.213.1.3".parse::<Ipv4Addr>().unwrap());

        // Links, addresses and routes as `ip` sees them.
        let pod_addrs = in_ns(&web_ns, || {
            run(&["ip", "-4", "-br", "addr", "show", "eth0"])
        });
        assert!(pod_addrs.contains("10.213.1.2/24"), "{pod_addrs}");
        assert!(pod_addrs.contains("UP"), "{pod_addrs}");
        let pod_routes = in_ns(&web_ns, || run(&["ip", "-4", "route", "show"]));
        assert!(
            pod_routes.contains("default via 10.213.1.1 dev eth0"),
            "{pod_routes}"
        );
        let dad = in_ns(&web_ns, || {
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/accept_dad").unwrap_or_default()
        });
        assert_eq!(dad.trim(), "0", "IPv6 DAD is off on the pod link");
        let bridge = run(&["ip", "-4", "-br", "addr", "show", BRIDGE]);
        assert!(bridge.contains("10.213.1.1/24"), "{bridge}");
        let veth = run(&["ip", "-d", "-o", "link", "show", "cfp2"]);
        assert!(veth.contains("hairpin on"), "{veth}");
        assert!(veth.contains(&format!("master {BRIDGE}")), "{veth}");
        let routes = run(&["ip", "-4", "route", "show"]);
        assert!(routes.contains("10.213.2.0/24 via 10.99.0.2"), "{routes}");
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap()
                .trim(),
            "1"
        );

        // Our table, as nft decodes what we encoded.
        let ruleset = json(&["nft", "-j", "list", "ruleset"]);
        let postrouting = nft_rules(&ruleset, "postrouting");
        assert_eq!(postrouting.len(), 2, "{ruleset:#}");
        assert_eq!(
            postrouting[..1],
            [serde_json::json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.213.0.0", "len": 16}}}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": {"prefix": {"addr": "10.213.0.0", "len": 16}}}},
                {"masquerade": null}
            ])],
            "{ruleset:#}"
        );
        let published = nft_rules(&ruleset, "published");
        assert_eq!(published.len(), 2, "{ruleset:#}");
        let text = run(&["nft", "list", "table", "ip", "compose_fleet"]);
        for line in [
            "type nat hook prerouting priority dstnat; policy accept;",
            "type nat hook output priority -100; policy accept;",
            "type nat hook postrouting priority srcnat; policy accept;",
            "ip daddr != 127.0.0.0/8 jump published",
            "fib daddr type local tcp dport 8080 dnat to 10.213.1.2:80",
            "ip daddr 10.99.0.1 udp dport 5353 dnat to 10.213.1.3:53",
            "ip saddr 10.213.0.0/16 ip daddr != 10.213.0.0/16 masquerade",
            "ct status dnat ip saddr 10.213.1.0/24 ip daddr 10.213.1.0/24 masquerade",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }

        // Traffic. Pod to pod on the bridge:
        let peer = serve_tcp(dns_ns.clone(), "0.0.0.0:7000", "from dns");
        assert_eq!(in_ns(&web_ns, || fetch("10.213.1.3:7000")), "from dns");
        assert_eq!(peer.recv().unwrap().ip(), web);
        // A published port from the host itself, at its LAN address:
        let peer = serve_tcp(web_ns.clone(), "0.0.0.0:80", "web");
        assert_eq!(fetch("10.99.0.1:8080"), "web");
        drop(peer);
        // ...and from the neighbour, through prerouting:
        let peer = serve_tcp(web_ns.clone(), "0.0.0.0:80", "web again");
        assert_eq!(
            in_ns(&neighbour_ns, || fetch("10.99.0.1:8080")),
            "web again"
        );
        assert_eq!(
            peer.recv().unwrap().ip(),
            "10.99.0.2".parse::<Ipv4Addr>().unwrap()
        );
        // Hairpin: a pod reaching a published port of its own host lands on another pod, or on
        // itself, and the answer comes back through the host (masqueraded to the bridge).
        let peer = serve_tcp(web_ns.clone(), "0.0.0.0:80", "web from dns");
        assert_eq!(in_ns(&dns_ns, || fetch("10.99.0.1:8080")), "web from dns");
        assert_eq!(
            peer.recv().unwrap().ip(),
            "10.213.1.1".parse::<Ipv4Addr>().unwrap()
        );
        let peer = serve_tcp(web_ns.clone(), "0.0.0.0:80", "web from itself");
        assert_eq!(
            in_ns(&web_ns, || fetch("10.99.0.1:8080")),
            "web from itself"
        );
        drop(peer);
        // UDP on a given host address:
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let dns_ns2 = dns_ns.clone();
        let echo = std::thread::spawn(move || {
            in_ns(&dns_ns2, move || {
                let s = UdpSocket::bind("0.0.0.0:53").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 64];
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            })
        });
        ready_rx.recv().unwrap();
        let answer = in_ns(&neighbour_ns, || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.send_to(b"ping", "10.99.0.1:5353").unwrap();
            let mut buf = [0u8; 64];
            let (n, _) = s.recv_from(&mut buf).expect("udp answer through DNAT");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        assert_eq!(answer, "ping");
        echo.join().unwrap();
        // Out of the fleet CIDR: the neighbour sees the host's address, not the pod's.
        let peer = serve_tcp(neighbour_ns.clone(), "0.0.0.0:9000", "outside");
        assert_eq!(in_ns(&web_ns, || fetch("10.99.0.2:9000")), "outside");
        assert_eq!(
            peer.recv().unwrap().ip(),
            "10.99.0.1".parse::<Ipv4Addr>().unwrap()
        );

        // Status shows the address; removal takes everything of ours away.
        assert_eq!(net.address_of("p", "web-1"), Some(web));
        net.detach("p", "web-1").unwrap();
        let text = run(&["nft", "list", "table", "ip", "compose_fleet"]);
        assert!(!text.contains("8080"), "web's port is unpublished:\n{text}");
        assert!(text.contains("5353"), "{text}");
        net.detach("p", "dns-1").unwrap();
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        assert_eq!(host_state(), before, "the host's network is as before");
        drop(sandboxes);
    });
}

#[test]
fn forward_drops_of_other_firewalls_are_found_by_name() {
    let test = "forward_drops_of_other_firewalls_are_found_by_name";
    if !is_root(test) || !have("nft", test) {
        return;
    }
    in_fresh_host(|| {
        assert!(Netlink.forward_drops().unwrap().is_empty());
        let script = "table ip filter {\n chain FORWARD {\n type filter hook forward priority 0; policy drop;\n }\n}\n\
                      table inet firewalld {\n chain filter_FORWARD {\n type filter hook forward priority 10; policy accept;\n ct state established accept\n reject with icmpx type admin-prohibited\n }\n}\n\
                      table ip quiet {\n chain passthrough {\n type filter hook forward priority 0; policy accept;\n }\n}\n";
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let found: Vec<String> = Netlink
            .forward_drops()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            found,
            [
                "iptables (table ip filter, chain FORWARD: policy drop)",
                "firewalld (table inet firewalld, chain filter_FORWARD: a rule drops or rejects)",
            ]
        );
        // Legacy x_tables, invisible to nftables: Docker's `iptables -P FORWARD DROP`.
        if Command::new("iptables-legacy")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: the legacy part of forward_drops_of_other_firewalls_are_found_by_name needs iptables-legacy");
            return;
        }
        run(&["iptables-legacy", "-P", "FORWARD", "ACCEPT"]);
        assert_eq!(
            Netlink.forward_drops().unwrap().len(),
            2,
            "ACCEPT is no drop"
        );
        run(&["iptables-legacy", "-P", "FORWARD", "DROP"]);
        let found: Vec<String> = Netlink
            .forward_drops()
            .unwrap()
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            found.last().map(String::as_str),
            Some("iptables-legacy (table ip filter, chain FORWARD: policy drop)"),
            "{found:?}"
        );
    });
}

/// CPU time of the calling thread (user + system): the work an attach does, without the waits
/// for the scheduler or the disk that dominate on a loaded machine.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// [`Netlink`], timing every call.
struct Timed(Netlink, std::sync::Mutex<Duration>);

impl Timed {
    fn time<T>(&self, f: impl FnOnce(&Netlink) -> T) -> T {
        let t = Instant::now();
        let out = f(&self.0);
        *self.1.lock().unwrap() += t.elapsed();
        out
    }

    fn take(&self) -> Duration {
        std::mem::take(&mut *self.1.lock().unwrap())
    }
}

impl NetKernel for Timed {
    fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        subnet: compose_fleet_agent::proto::net::Ipv4Net,
    ) -> std::io::Result<()> {
        self.time(|k| k.ensure_bridge(name, gateway, subnet))
    }
    fn enable_forwarding(&self) -> std::io::Result<()> {
        self.time(|k| k.enable_forwarding())
    }
    fn attach_pod(&self, link: &PodLink) -> std::io::Result<()> {
        self.time(|k| k.attach_pod(link))
    }
    fn remove_link(&self, name: &str) -> std::io::Result<()> {
        self.time(|k| k.remove_link(name))
    }
    fn replace_rules(
        &self,
        rules: &compose_fleet_agent::network::nft::Ruleset,
    ) -> std::io::Result<()> {
        self.time(|k| k.replace_rules(rules))
    }
    fn remove_rules(&self) -> std::io::Result<()> {
        self.time(|k| k.remove_rules())
    }
    fn set_routes(
        &self,
        routes: &[compose_fleet_agent::network::PeerRoute],
    ) -> std::io::Result<()> {
        self.time(|k| k.set_routes(routes))
    }
    fn forward_drops(
        &self,
    ) -> std::io::Result<Vec<compose_fleet_agent::network::nft::ForwardDrop>> {
        self.time(|k| k.forward_drops())
    }
}

/// Benchmark (ignored; run with `--ignored --nocapture` as root): the time to attach a pod (veth
/// pair, pod-side address and route, DAD off; no published ports) and to detach it, over 50 pods
/// in a throwaway host namespace, in total and in kernel calls alone (the rest is the fsynced
/// write of the address book), and the thread's CPU time (the work itself: netlink requests are
/// processed in the sending thread). Sandbox creation is not counted: the runtime does it anyway.
#[test]
#[ignore]
fn bench_attach_and_detach() {
    let test = "bench_attach_and_detach";
    if !is_root(test) {
        return;
    }
    in_fresh_host(|| {
        const PODS: usize = 50;
        let tmp = tempfile::tempdir().unwrap();
        let sandboxes = Sandboxes(
            (0..PODS)
                .map(|i| tmp.path().join(format!("pods/p{i}")))
                .collect(),
        );
        let netns: Vec<PathBuf> = sandboxes
            .0
            .iter()
            .map(|d| pod::create(d, "p").unwrap().net)
            .collect();
        let kernel = Arc::new(Timed(Netlink, Default::default()));
        let net = Network::open(tmp.path(), kernel.clone()).unwrap();
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        kernel.take();
        let (mut attach, mut attach_kernel, mut attach_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for (i, ns) in netns.iter().enumerate() {
            let (t, cpu) = (Instant::now(), thread_cpu());
            net.attach("bench", &format!("p{i}"), ns, &[]).unwrap();
            attach.push(t.elapsed());
            attach_cpu.push(thread_cpu() - cpu);
            attach_kernel.push(kernel.take());
        }
        let (mut detach, mut detach_kernel) = (Vec::new(), Vec::new());
        for i in 0..PODS {
            let t = Instant::now();
            net.detach("bench", &format!("p{i}")).unwrap();
            detach.push(t.elapsed());
            detach_kernel.push(kernel.take());
        }
        let summary = |name: &str, mut v: Vec<Duration>| {
            let first = v[0];
            v.sort();
            eprintln!(
                "{name}: first {first:?}, p50 {:?}, p90 {:?}, max {:?} over {PODS} pods",
                v[v.len() / 2],
                v[v.len() * 9 / 10],
                v[v.len() - 1]
            );
        };
        summary("attach", attach);
        summary("attach, kernel calls only", attach_kernel);
        summary("attach, CPU time of the thread", attach_cpu);
        summary("detach", detach);
        summary("detach, kernel calls only", detach_kernel);
        drop(sandboxes);
    });
}

#[test]
fn a_refused_batch_names_its_step_and_changes_nothing() {
    let test = "a_refused_batch_names_its_step_and_changes_nothing";
    if !is_root(test) || !have("nft", test) {
        return;
    }
    in_fresh_host(|| {
        // A table of our name whose `published` is a base chain: our regular chain cannot
        // replace it, so the kernel refuses the whole batch.
        let script = "table ip compose_fleet {\n chain published {\n type filter hook input priority 0; policy accept;\n }\n}\n";
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let before = run(&["nft", "list", "ruleset"]);
        let err = Netlink
            .replace_rules(&compose_fleet_agent::network::nft::Ruleset {
                fleet: "10.213.0.0/16".parse().unwrap(),
                subnet: "10.213.1.0/24".parse().unwrap(),
                published: vec![],
                vips: vec![],
                service_range: None,
            })
            .expect_err("refused");
        eprintln!("{err}");
        assert!(
            err.to_string()
                .starts_with("nftables: adding rule `jump published` to chain prerouting: "),
            "{err}"
        );
        assert_eq!(
            run(&["nft", "list", "ruleset"]),
            before,
            "atomic: nothing applied"
        );
    });
}
