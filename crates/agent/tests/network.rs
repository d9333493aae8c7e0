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
use compose_fleet_agent::network::{fastpath, Network, BRIDGE};
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

/// The host's LAN: bridge `lan0` holding the host's own address 10.99.0.1, and a neighbour host
/// (10.99.0.2) whose end is in `neighbour`.
fn lan_with_neighbour(neighbour: &Path) {
    let lan: compose_fleet_agent::proto::net::Ipv4Net = "10.99.0.0/24".parse().unwrap();
    Netlink
        .ensure_bridge("lan0", "10.99.0.1".parse().unwrap(), lan)
        .expect("LAN bridge");
    Netlink
        .attach_pod(&PodLink {
            netns: neighbour.to_path_buf(),
            host_if: "lan-nb".into(),
            pod_if: "eth0".into(),
            bridge: "lan0".into(),
            addr: "10.99.0.2".parse().unwrap(),
            subnet: lan,
            gateway: "10.99.0.1".parse().unwrap(),
            alias: None,
        })
        .expect("neighbour link");
}

/// [`lan_with_neighbour`], and the neighbour also holds 10.213.2.5, a pod address of "host 2",
/// sending from it to this host's pods as a pod of host 2 would.
fn lan_with_a_remote_pod(neighbour: &Path) {
    lan_with_neighbour(neighbour);
    in_ns(neighbour, || {
        run(&["ip", "addr", "add", "10.213.2.5/32", "dev", "eth0"]);
        let route = "10.213.1.0/24 via 10.99.0.1 src 10.213.2.5";
        run(&[
            &["ip", "route", "add"][..],
            &route.split(' ').collect::<Vec<_>>(),
        ]
        .concat());
    });
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run(args)).unwrap_or_else(|e| panic!("{args:?} is not JSON: {e}"))
}

/// What `ip`, `nft` and `tc` show of the host namespace, for before/after comparisons.
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
        "links {links:?}\naddrs {addrs:?}\nroutes {}\nnft {}\nqdiscs {}",
        run(&["ip", "-4", "route", "show"]),
        run(&["nft", "list", "ruleset"]),
        run(&["tc", "qdisc", "show"])
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

/// Pod sandboxes named `names` under `dir` (removed when the guard drops), and their network
/// namespaces, in order.
fn pod_sandboxes(dir: &Path, names: &[&str]) -> (Sandboxes, Vec<PathBuf>) {
    let sandboxes = Sandboxes(names.iter().map(|n| dir.join("pods").join(n)).collect());
    let ns = sandboxes
        .0
        .iter()
        .map(|d| pod::create(d, "p").expect("creates a pod sandbox").net)
        .collect();
    (sandboxes, ns)
}

#[test]
fn pods_get_addresses_routes_nat_and_published_ports_and_leave_nothing_behind() {
    let test = "pods_get_addresses_routes_nat_and_published_ports_and_leave_nothing_behind";
    if !is_root(test) || !have("nft", test) || !have("ip", test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (sandboxes, ns) = pod_sandboxes(tmp.path(), &["web", "dns", "neighbour"]);
        let (web_ns, dns_ns, neighbour_ns) = (ns[0].clone(), ns[1].clone(), ns[2].clone());

        // The host's LAN, with a neighbour (another "host").
        lan_with_neighbour(&neighbour_ns);
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
        assert!(pod_addrs.contains("10.213.1.2/32"), "{pod_addrs}");
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
        // Isolated unless br_netfilter sends bridged packets through our forward chain.
        let isolated = !compose_fleet_agent::network::kernel::bridged_ipv4_is_filtered();
        assert_eq!(veth.contains("isolated on"), isolated, "{veth}");
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
        assert_eq!(postrouting.len(), 4, "{ruleset:#}");
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
            "ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto tcp snat to :61000-65535",
            "ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto udp snat to :61000-65535",
            "type filter hook prerouting priority raw; policy accept;",
            "ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1 tcp sport < 61000 tcp dport < 61000 notrack",
            "ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1 udp sport < 61000 udp dport < 61000 notrack",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
        // The port-only SNAT and the notrack rule, as the kernel holds them.
        let prefix = serde_json::json!({"prefix": {"addr": "10.213.0.0", "len": 16}});
        let ip = |field: &str, op: &str, right: &serde_json::Value| {
            serde_json::json!({"match": {"op": op,
                "left": {"payload": {"protocol": "ip", "field": field}}, "right": right}})
        };
        assert_eq!(
            postrouting[2],
            serde_json::json!([
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                ip("saddr", "==", &prefix),
                ip("daddr", "==", &prefix),
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"snat": {"port": {"range": [61000, 65535]}}}
            ]),
            "{ruleset:#}"
        );
        let raw = nft_rules(&ruleset, "prerouting_raw");
        assert_eq!(raw.len(), 2, "{ruleset:#}");
        let port_below = |proto: &str, field: &str| {
            serde_json::json!({"match": {"op": "<",
                "left": {"payload": {"protocol": proto, "field": field}}, "right": 61000}})
        };
        for (rule, proto) in raw.iter().zip(["tcp", "udp"]) {
            assert_eq!(
                *rule,
                serde_json::json!([
                    ip("saddr", "==", &prefix),
                    ip("daddr", "==", &prefix),
                    ip("daddr", "!=", &serde_json::json!("10.213.1.1")),
                    port_below(proto, "sport"),
                    port_below(proto, "dport"),
                    {"notrack": null}
                ]),
                "{ruleset:#}"
            );
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

/// [`Netlink`], timing every call made on the thread that created it (not the reaper's link
/// deletions, which a detach does not wait for).
struct Timed(Netlink, std::sync::Mutex<Duration>, std::thread::ThreadId);

impl Timed {
    fn new() -> Timed {
        Timed(Netlink, Default::default(), std::thread::current().id())
    }

    fn time<T>(&self, f: impl FnOnce(&Netlink) -> T) -> T {
        let t = Instant::now();
        let out = f(&self.0);
        if std::thread::current().id() == self.2 {
            *self.1.lock().unwrap() += t.elapsed();
        }
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
        previous: Option<&compose_fleet_agent::network::nft::Ruleset>,
    ) -> std::io::Result<()> {
        self.time(|k| k.replace_rules(rules, previous))
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
    fn refresh_pod(&self, link: &PodLink) -> std::io::Result<bool> {
        self.time(|k| k.refresh_pod(link))
    }
    fn pod_links(&self) -> std::io::Result<Vec<compose_fleet_agent::network::HostLink>> {
        self.time(|k| k.pod_links())
    }
}

/// Benchmark (ignored; run with `--ignored --nocapture` as root): the time to attach a pod (veth
/// pair, pod-side address and route, DAD off; no published ports) and to detach it, over 50 pods
/// in a throwaway host namespace, in total and in kernel calls alone (an attach does not wait for
/// the address book's write, a detach waits for it while its link goes), and the thread's CPU time (the work itself: netlink requests are
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
        let names: Vec<String> = (0..PODS).map(|i| format!("p{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (sandboxes, netns) = pod_sandboxes(tmp.path(), &names);
        let kernel = Arc::new(Timed::new());
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

/// An attach returns before `network.json` is on disk; its record is the alias of the pod's
/// host-side veth. An agent that died before the write (the file as it was before the attach)
/// takes the pod back from the kernel: its address is never handed to another pod.
#[test]
fn an_attach_whose_write_was_lost_never_yields_a_duplicate_address_after_a_restart() {
    let test = "an_attach_whose_write_was_lost_never_yields_a_duplicate_address_after_a_restart";
    if !is_root(test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (sandboxes, ns) = pod_sandboxes(tmp.path(), &["a", "b"]);
        let state = tmp.path().join("state");
        let net = Network::open(&state, Arc::new(Netlink)).unwrap();
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        let file = state.join("network.json");
        let before = std::fs::read(&file).unwrap();
        let ports = [PortMapping {
            host_ip: None,
            published: 8080,
            target: 80,
            protocol: "tcp".into(),
        }];
        let a = net.attach("p", "a-1", &ns[0], &ports).unwrap().unwrap();
        drop(net);
        std::fs::write(&file, &before).unwrap();

        let again = Network::open(&state, Arc::new(Netlink)).unwrap();
        assert_eq!(
            again.address_of("p", "a-1"),
            Some(a),
            "taken back from the link"
        );
        let b = again.attach("p", "b-1", &ns[1], &[]).unwrap().unwrap();
        assert_ne!(a, b);
        let err = again
            .attach("q", "c-1", &ns[1], &ports)
            .expect_err("8080 is a-1's");
        assert!(err.to_string().contains("p/a-1"), "{err}");
        again.detach("p", "b-1").unwrap();
        again.detach("p", "a-1").unwrap();
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
        let rules = compose_fleet_agent::network::nft::Ruleset {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            published: vec![],
            vips: vec![],
            service_range: None,
            isolation: Default::default(),
        };
        // As if this process had written another table before (without one, the table is
        // rebuilt from nothing, and ours by name, so the blocker would simply go).
        let previous = compose_fleet_agent::network::nft::Ruleset {
            service_range: Some("10.214.0.0/16".parse().unwrap()),
            ..rules.clone()
        };
        let err = Netlink
            .replace_rules(&rules, Some(&previous))
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

/// A server in namespace `netns` on `port`, answering every connection with `name`, for as long
/// as the test runs.
fn serve_forever(netns: PathBuf, port: u16, name: &'static str) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        in_ns(&netns, move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("binds in the namespace");
            ready_tx.send(()).unwrap();
            for mut s in listener.incoming().flatten() {
                let _ = s.write_all(name.as_bytes());
            }
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
}

/// What `addr` answers from namespace `netns`; `None` when the connection does not get through
/// (a dropped SYN: the connect times out).
fn answer_from(netns: &Path, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_ns(netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

fn on(networks: &[&str], internal: &[&str]) -> compose_fleet_agent::proto::PodNetwork {
    compose_fleet_agent::proto::PodNetwork {
        networks: networks.iter().map(|s| s.to_string()).collect(),
        internal: internal.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// compose networks and projects on the real kernel, with and without br_netfilter: pods reach
/// each other only on a shared network of their project (directly, through a VIP, to and from a
/// pod of another host), published ports stay open to everyone, a pod only on internal networks
/// does not leave the fleet, and the last pod takes every rule and set with it.
#[test]
fn pods_reach_only_pods_on_a_shared_network_and_projects_are_apart() {
    let test = "pods_reach_only_pods_on_a_shared_network_and_projects_are_apart";
    if !is_root(test) || !have("nft", test) || !have("ip", test) {
        return;
    }
    for br_netfilter in [true, false] {
        eprintln!("br_netfilter calling iptables: {br_netfilter}");
        in_fresh_host(move || isolation_scenario(br_netfilter));
    }
}

fn isolation_scenario(br_netfilter: bool) {
    use compose_fleet_agent::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
    let _ = std::fs::write(
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        if br_netfilter { "1" } else { "0" },
    );
    let tmp = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c", "d", "e", "f", "neighbour"];
    let (sandboxes, ns) = pod_sandboxes(tmp.path(), &names);
    let (a, b, c, d, e, f, neighbour) = (&ns[0], &ns[1], &ns[2], &ns[3], &ns[4], &ns[5], &ns[6]);

    lan_with_a_remote_pod(neighbour);
    let before = host_state();

    let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
    let host_network = |peers: bool| HostNetwork {
        fleet: "10.213.0.0/16".parse().unwrap(),
        subnet: "10.213.1.0/24".parse().unwrap(),
        peers: if peers {
            vec![PeerSubnet {
                host: "h2".into(),
                subnet: "10.213.2.0/24".parse().unwrap(),
                via: "10.99.0.2".parse().unwrap(),
            }]
        } else {
            vec![]
        },
        mesh: None,
    };
    net.configure(&host_network(true)).expect("configures");
    let attach = |project: &str, pod: &str, ns: &Path, ports: &[PortMapping], n| {
        net.attach_to(project, pod, ns, ports, &n)
            .unwrap()
            .unwrap()
            .to_string()
    };
    let ip_a = attach("p", "a-1", a, &[], on(&["front"], &[]));
    let ip_b = attach("p", "b-1", b, &[], on(&["front", "back"], &[]));
    let ip_c = attach(
        "p",
        "c-1",
        c,
        &[port(8081, 80, "tcp", None)],
        on(&["back"], &[]),
    );
    let ip_d = attach("q", "d-1", d, &[], on(&[], &[]));
    let ip_e = attach("p", "e-1", e, &[], on(&["int"], &["int"]));
    let ip_f = attach("p", "f-1", f, &[], on(&["int", "front"], &["int"]));
    for (ns, name) in [(a, "a"), (b, "b"), (c, "c"), (d, "d"), (e, "e"), (f, "f")] {
        serve_forever(ns.clone(), 80, name);
    }
    serve_forever(neighbour.clone(), 80, "remote");
    serve_forever(neighbour.clone(), 9000, "outside");
    // The service map: `cs` (c) has a VIP on `back`; the pod of host 2 runs `r` on `back`.
    let endpoint = |pod: &str, addr: &str| Endpoint {
        replica: 1,
        pod: pod.into(),
        host: "h".into(),
        addr: addr.parse().unwrap(),
        healthy: true,
    };
    let service = |name: &str, vip: Option<&str>, e: Endpoint| Service {
        name: name.into(),
        endpoint_mode: EndpointMode::Vip,
        vip: vip.map(|v| v.parse().unwrap()),
        networks: vec!["back".into()],
        aliases: vec![],
        container_name: None,
        replicas: vec![e],
    };
    net.set_services(ServiceMap {
        project: "p".into(),
        services: vec![
            service("cs", Some("10.214.0.5"), endpoint("c-1", &ip_c)),
            service("r", None, endpoint("r-1", "10.213.2.5")),
        ],
    })
    .expect("takes the map");

    let reach = |from: &Path, to: &str| answer_from(from, &format!("{to}:80"));
    let some = |s: &str| Some(s.to_string());
    // One host: a shared network, and nothing else.
    assert_eq!(reach(a, &ip_b), some("b"), "a and b share front");
    assert_eq!(reach(b, &ip_c), some("c"), "b and c share back");
    assert_eq!(reach(c, &ip_b), some("b"));
    assert_eq!(
        reach(a, &ip_c),
        None,
        "a (front) and c (back) share nothing"
    );
    assert_eq!(reach(c, &ip_a), None);
    assert_eq!(reach(d, &ip_a), None, "another project");
    assert_eq!(reach(a, &ip_d), None, "another project");
    assert_eq!(
        reach(e, &ip_f),
        some("f"),
        "an internal network works inside"
    );
    assert_eq!(reach(f, &ip_e), some("e"));
    assert_eq!(reach(e, &ip_a), None);
    // Through the VIP: only for a pod that shares a network with the replica.
    assert_eq!(
        reach(b, "10.214.0.5"),
        some("c"),
        "VIP of a reachable service"
    );
    assert_eq!(
        reach(a, "10.214.0.5"),
        None,
        "VIP of a service on another network"
    );
    // Across hosts, both ways, by the service map.
    assert_eq!(
        reach(b, "10.213.2.5"),
        some("remote"),
        "to a remote pod on back"
    );
    assert_eq!(
        reach(a, "10.213.2.5"),
        None,
        "to a remote pod on another network"
    );
    assert_eq!(
        reach(neighbour, &ip_c),
        some("c"),
        "from a remote pod on back"
    );
    assert_eq!(
        reach(neighbour, &ip_a),
        None,
        "from a remote pod on another network"
    );
    // Published ports are for everyone: another project's pod, the neighbour host.
    assert_eq!(
        answer_from(d, "10.99.0.1:8081"),
        some("c"),
        "published, from another project"
    );
    assert_eq!(answer_from(neighbour, "10.99.0.1:8081"), some("c"));
    // Egress: not from a pod only on internal networks; from one also on another network, yes.
    assert_eq!(answer_from(a, "10.99.0.2:9000"), some("outside"));
    assert_eq!(answer_from(f, "10.99.0.2:9000"), some("outside"));
    assert_eq!(
        answer_from(e, "10.99.0.2:9000"),
        None,
        "internal: no egress"
    );

    // The forward chain as nft decodes it.
    let text = run(&["nft", "list", "table", "ip", "compose_fleet"]);
    for line in [
        "type filter hook forward priority filter; policy accept;",
        "ct state established,related accept",
        "ip saddr @no_egress ip daddr != 10.213.0.0/16 drop",
        "ct status dnat ct original ip daddr != 10.214.0.0/16 accept",
        "ip saddr @net0 ip daddr @net0 accept",
        "type ipv4_addr",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    let ruleset = json(&["nft", "-j", "list", "ruleset"]);
    assert_eq!(
        nft_rules(&ruleset, "forward")[5],
        serde_json::json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "@net0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": "@net0"}},
            {"accept": null}
        ]),
        "{ruleset:#}"
    );

    // A pod leaving its network: c goes, b no longer reaches its address; all go, nothing stays.
    net.detach("p", "c-1").unwrap();
    let back = json(&["nft", "-j", "list", "set", "ip", "compose_fleet", "net0"]);
    let elements = back["nftables"][1]["set"]["elem"].clone();
    assert_eq!(
        elements,
        serde_json::json!([ip_b, "10.213.2.5"]),
        "c left the set of back: {back:#}"
    );
    for pod in ["a-1", "b-1", "e-1", "f-1"] {
        net.detach("p", pod).unwrap();
    }
    net.detach("q", "d-1").unwrap();
    net.set_services(ServiceMap {
        project: "p".into(),
        services: vec![],
    })
    .unwrap();
    net.configure(&host_network(false)).unwrap();
    in_ns(neighbour, || {
        run(&["ip", "route", "del", "10.213.1.0/24"]);
        run(&["ip", "addr", "del", "10.213.2.5/32", "dev", "eth0"]);
    });
    assert_eq!(host_state(), before, "the host's network is as before");
    drop(sandboxes);
}

/// The host's conntrack table (the calling thread's namespace), one entry a line: from
/// `/proc/net/nf_conntrack`, or over ctnetlink where the kernel has no such file
/// (`CONFIG_NF_CONNTRACK_PROCFS` off).
fn conntrack_entries() -> Vec<String> {
    match std::fs::read_to_string("/proc/thread-self/net/nf_conntrack") {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => conntrack_over_netlink().expect("dumps conntrack over netlink"),
    }
}

/// The conntrack table over ctnetlink (an `IPCTNL_MSG_CT_GET` dump of `AF_INET`), each entry
/// with the fields of `/proc/net/nf_conntrack` read here: ` tcp src= dst= sport= dport= src=
/// dst= sport= dport= ` (original direction, then reply).
fn conntrack_over_netlink() -> std::io::Result<Vec<String>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NETLINK_NETFILTER: i32 = 12;
    const CT_GET: u16 = (1 << 8) | 1; // NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET
                                      // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = Vec::new();
    req.extend(20u32.to_ne_bytes());
    req.extend(CT_GET.to_ne_bytes());
    req.extend(((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend([1, 0, 0, 0, 0, 0, 0, 0]); // sequence, port id
    req.extend([libc::AF_INET as u8, 0, 0, 0]); // nfgenmsg: family, version, resource id
                                                // SAFETY: sends `req` from memory we own; an unconnected netlink socket sends to the kernel.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Netlink attributes: (type without flags, payload).
    fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
            let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
            if len < 4 || len > b.len() {
                break;
            }
            out.push((kind, &b[4..len]));
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        out
    }
    fn get(a: &[(u16, &[u8])], kind: u16) -> Vec<u8> {
        a.iter()
            .find(|(k, _)| *k == kind)
            .map_or(Vec::new(), |(_, v)| v.to_vec())
    }
    // CTA_TUPLE_IP (CTA_IP_V4_SRC, _DST) and CTA_TUPLE_PROTO (CTA_PROTO_NUM, _SRC_PORT, _DST_PORT).
    fn tuple(t: &[u8]) -> (u8, String) {
        let t = attrs(t);
        let (ip, proto) = (get(&t, 1), get(&t, 2));
        let (ip, proto) = (attrs(&ip), attrs(&proto));
        let addr = |k| {
            let v = get(&ip, k);
            <[u8; 4]>::try_from(v.as_slice()).map_or("?".into(), |a| Ipv4Addr::from(a).to_string())
        };
        let port = |k| {
            let v = get(&proto, k);
            <[u8; 2]>::try_from(v.as_slice()).map_or(0, u16::from_be_bytes)
        };
        let number = get(&proto, 1).first().copied().unwrap_or(0);
        let text = format!(
            "src={} dst={} sport={} dport={}",
            addr(1),
            addr(2),
            port(2),
            port(3)
        );
        (number, text)
    }
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: receives into memory we own, at most its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < 16 || len > msgs.len() {
                break;
            }
            match kind {
                3 => return Ok(entries), // NLMSG_DONE
                2 => {
                    // NLMSG_ERROR
                    let code = i32::from_ne_bytes(msgs[16..20].try_into().unwrap());
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                CT_GET | 0x100 => {
                    let a = attrs(&msgs[20..len]);
                    let ((proto, orig), (_, reply)) = (tuple(&get(&a, 1)), tuple(&get(&a, 2)));
                    let name = match proto {
                        6 => "tcp".to_string(),
                        17 => "udp".to_string(),
                        p => p.to_string(),
                    };
                    entries.push(format!("ipv4 {name} {orig} {reply} "));
                }
                _ => {}
            }
            msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
        }
    }
}

/// The entries whose original direction goes from `src` to `dst`.
fn tracked(entries: &[String], src: &str, dst: &str) -> Vec<String> {
    let needle = format!(" src={src} dst={dst} ");
    entries
        .iter()
        .filter(|e| e.contains(&needle))
        .cloned()
        .collect()
}

/// A UDP echo in namespace `netns` for one datagram; sends back the peer's address it saw.
fn echo_udp_once(netns: PathBuf, port: u16) -> std::sync::mpsc::Receiver<SocketAddr> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (peer_tx, peer_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        in_ns(&netns, move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).expect("binds in the namespace");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
                let _ = peer_tx.send(from);
            }
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    peer_rx
}

/// What `addr` answers a connection from namespace `netns`.
fn fetch_in(netns: &Path, addr: String) -> String {
    in_ns(netns, move || fetch(&addr))
}

/// What a UDP echo at `addr` sends back to `ping` from namespace `netns`.
fn udp_answer(netns: &Path, addr: &str, ping: &'static str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_ns(netns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(ping.as_bytes(), addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        // The answer must come from the address asked, VIP included (un-DNAT'ed).
        assert_eq!(from, addr, "the answer's source");
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// Host 1 of the fleet 10.213.0.0/16 (subnet 10.213.1.0/24), with host 2 (10.213.2.0/24)
/// reached via `via`.
fn host_1_with_host_2_via(via: &str) -> HostNetwork {
    HostNetwork {
        fleet: "10.213.0.0/16".parse().unwrap(),
        subnet: "10.213.1.0/24".parse().unwrap(),
        peers: vec![PeerSubnet {
            host: "h2".into(),
            subnet: "10.213.2.0/24".parse().unwrap(),
            via: via.parse().unwrap(),
        }],
        mesh: None,
    }
}

/// Project `p`'s service map: `api`, VIP 10.214.0.7, one replica on host 2 at 10.213.2.5, on
/// the default network.
fn api_on_host_2() -> compose_fleet_agent::proto::service::ServiceMap {
    use compose_fleet_agent::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
    ServiceMap {
        project: "p".into(),
        services: vec![Service {
            name: "api".into(),
            endpoint_mode: EndpointMode::Vip,
            vip: Some("10.214.0.7".parse().unwrap()),
            networks: vec![],
            aliases: vec![],
            container_name: None,
            replicas: vec![Endpoint {
                replica: 1,
                pod: "api-1".into(),
                host: "h2".into(),
                addr: "10.213.2.5".parse().unwrap(),
                healthy: true,
            }],
        }],
    }
}

/// Plain pod-to-pod TCP and UDP, on one host and to a pod of another host, leaves no conntrack
/// entry on the host; a connection through a VIP to a pod of another host leaves with a source
/// port from the reserved range, is tracked, and its answers are un-NAT'ed; a pod whose own
/// ports reach into the reserved range is tracked on them and still gets through.
#[test]
fn plain_pod_to_pod_flows_are_untracked_and_vip_flows_take_a_reserved_port() {
    use compose_fleet_agent::network::notrack::RESERVED_PORTS;
    let test = "plain_pod_to_pod_flows_are_untracked_and_vip_flows_take_a_reserved_port";
    if !is_root(test) || !have("ip", test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (sandboxes, ns) = pod_sandboxes(tmp.path(), &["a", "b", "neighbour"]);
        let (a, b, neighbour) = (&ns[0], &ns[1], &ns[2]);
        lan_with_a_remote_pod(neighbour);
        let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
        net.configure(&host_1_with_host_2_via("10.99.0.2"))
            .expect("configures");
        let ip_a = net.attach("p", "a-1", a, &[]).unwrap().unwrap().to_string();
        let ip_b = net.attach("p", "b-1", b, &[]).unwrap().unwrap().to_string();
        // `api` has a VIP and its one replica on host 2.
        net.set_services(api_on_host_2()).expect("takes the map");
        let reserved = RESERVED_PORTS.0..=RESERVED_PORTS.1;

        // Pod to pod on this host, TCP and UDP: answered, never tracked.
        let peer = serve_tcp(b.clone(), "0.0.0.0:7000", "b");
        assert_eq!(fetch_in(a, format!("{ip_b}:7000")), "b");
        assert!(!reserved.contains(&peer.recv().unwrap().port()));
        let peer = echo_udp_once(b.clone(), 7001);
        assert_eq!(
            udp_answer(a, &format!("{ip_b}:7001"), "ping b").as_deref(),
            Some("ping b")
        );
        assert!(!reserved.contains(&peer.recv().unwrap().port()));
        // To a pod of the other host, TCP and UDP: the same.
        let peer = serve_tcp(neighbour.clone(), "0.0.0.0:7002", "remote");
        assert_eq!(in_ns(a, || fetch("10.213.2.5:7002")), "remote");
        let seen = peer.recv().unwrap();
        assert_eq!(seen.ip().to_string(), ip_a, "no address rewritten");
        assert!(!reserved.contains(&seen.port()), "{seen}");
        let peer = echo_udp_once(neighbour.clone(), 7003);
        assert_eq!(
            udp_answer(a, "10.213.2.5:7003", "ping remote").as_deref(),
            Some("ping remote")
        );
        assert!(!reserved.contains(&peer.recv().unwrap().port()));
        let entries = conntrack_entries();
        for (from, to) in [(&ip_a, &ip_b), (&ip_a, &"10.213.2.5".to_string())] {
            assert_eq!(
                tracked(&entries, from, to),
                Vec::<String>::new(),
                "pod-to-pod flows left conntrack entries"
            );
        }

        // Through the VIP to the pod of host 2: the client's address is kept, its port is one of
        // the reserved range, the connection is tracked and the answer un-DNAT'ed.
        let peer = serve_tcp(neighbour.clone(), "0.0.0.0:7004", "api over the VIP");
        assert_eq!(in_ns(a, || fetch("10.214.0.7:7004")), "api over the VIP");
        let seen = peer.recv().unwrap();
        assert_eq!(seen.ip().to_string(), ip_a);
        assert!(reserved.contains(&seen.port()), "{seen}");
        let peer = echo_udp_once(neighbour.clone(), 7005);
        assert_eq!(
            udp_answer(a, "10.214.0.7:7005", "ping api").as_deref(),
            Some("ping api")
        );
        let seen_udp = peer.recv().unwrap();
        assert!(reserved.contains(&seen_udp.port()), "{seen_udp}");
        // Read both ways where /proc has the table, so the netlink reader is checked too.
        let mut readings = vec![conntrack_over_netlink().expect("dumps conntrack over netlink")];
        readings.push(conntrack_entries());
        for entries in readings {
            let vip = tracked(&entries, &ip_a, "10.214.0.7");
            for (proto, port) in [("tcp", seen.port()), ("udp", seen_udp.port())] {
                let reply = format!(" src=10.213.2.5 dst={ip_a} ");
                assert!(
                    vip.iter().any(|e| e.contains(&format!(" {proto} "))
                        && e.contains(&reply)
                        && e.contains(&format!(" dport={port} "))),
                    "no {proto} entry for the VIP flow answered to port {port}: {vip:#?}"
                );
            }
        }

        // A pod whose own ports are in the reserved range: tracked there, and it still works.
        in_ns(a, || {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "62000\t62100")
                .expect("sets the pod's port range")
        });
        let peer = serve_tcp(b.clone(), "0.0.0.0:7006", "b on a reserved port");
        assert_eq!(fetch_in(a, format!("{ip_b}:7006")), "b on a reserved port");
        let seen = peer.recv().unwrap();
        assert!((62000..=62100).contains(&seen.port()), "{seen}");
        let entries = conntrack_entries();
        assert_eq!(
            tracked(&entries, &ip_a, &ip_b).len(),
            1,
            "the reserved-port flow is tracked: {entries:#?}"
        );

        net.detach("p", "a-1").unwrap();
        net.detach("p", "b-1").unwrap();
        drop(sandboxes);
    });
}

/// Benchmark (ignored; run with `--ignored --nocapture` as root): connection set-up between two
/// pods of one host (through the forward chain) with the isolation rules and without them, and the
/// size of our table for 100 pods. The 100 pods are this host's two plus 98 of other hosts,
/// in 10 projects of 2 to 3 networks each (every network is a set and a rule); the two pods'
/// network sorts last, so the connection walks every network rule before its own: the worst
/// case. Without: the same table with the forward chain emptied.
#[test]
#[ignore]
fn bench_isolation_connection_setup_and_rule_counts() {
    use compose_fleet_agent::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
    let test = "bench_isolation_connection_setup_and_rule_counts";
    if !is_root(test) || !have("nft", test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (sandboxes, ns) = pod_sandboxes(tmp.path(), &["client", "server"]);
        let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        let client = net
            .attach_to("zz", "client-1", &ns[0], &[], &on(&["last"], &[]))
            .unwrap()
            .unwrap();
        let server = net
            .attach_to("zz", "server-1", &ns[1], &[], &on(&["last"], &[]))
            .unwrap()
            .unwrap();
        // 98 pods of other hosts: 10 projects, service k of a project on networks k%3 and front.
        let mut pods = 0;
        for p in 0..10u8 {
            let services = (0..10u8)
                .filter(|_| {
                    pods += 1;
                    pods <= 98
                })
                .map(|k| Service {
                    name: format!("s{k}"),
                    endpoint_mode: EndpointMode::Vip,
                    vip: Some(Ipv4Addr::new(10, 214, p, k + 1)),
                    networks: vec![format!("n{}", k % 3), "front".into()],
                    aliases: vec![],
                    container_name: None,
                    replicas: vec![Endpoint {
                        replica: 1,
                        pod: format!("s{k}-1"),
                        host: "h2".into(),
                        addr: Ipv4Addr::new(10, 213, 2 + p, 2 + k),
                        healthy: true,
                    }],
                })
                .collect();
            net.set_services(ServiceMap {
                project: format!("b{p}"),
                services,
            })
            .unwrap();
        }
        let ruleset = json(&["nft", "-j", "list", "ruleset"]);
        let objects = ruleset["nftables"].as_array().unwrap();
        let count = |kind: &str| objects.iter().filter(|o| o.get(kind).is_some()).count();
        let elements: usize = objects
            .iter()
            .filter_map(|o| o.get("set"))
            .map(|s| s["elem"].as_array().map_or(0, Vec::len))
            .sum();
        eprintln!(
            "100 pods (2 here, 98 elsewhere), {} networks: {} rules in all, {} in the forward \
             chain, {} sets holding {elements} addresses, {} chains",
            count("set"),
            count("rule"),
            nft_rules(&ruleset, "forward").len(),
            count("set"),
            count("chain"),
        );
        serve_forever(ns[1].clone(), 80, "s");
        const CONNECTIONS: usize = 2000;
        let addr: SocketAddr = format!("{server}:80").parse().unwrap();
        let time = || {
            in_ns(&ns[0], move || {
                (0..CONNECTIONS)
                    .map(|_| {
                        let t = Instant::now();
                        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                        let d = t.elapsed();
                        drop(s);
                        d
                    })
                    .collect::<Vec<_>>()
            })
        };
        let percentiles = |mut v: Vec<Duration>| {
            v.sort();
            format!(
                "p50 {:?}, p99 {:?}, max {:?} over {}",
                v[v.len() / 2],
                v[v.len() * 99 / 100],
                v[v.len() - 1],
                v.len()
            )
        };
        // Alternate, so that the machine's load falls on both alike.
        for round in 1..=2 {
            eprintln!(
                "round {round}: {client} -> {server} with isolation: {}",
                percentiles(time())
            );
            // Without: an `accept` before every rule of the chain, taken away after.
            let echo = run(&[
                "nft",
                "--echo",
                "--handle",
                "insert",
                "rule",
                "ip",
                "compose_fleet",
                "forward",
                "accept",
            ]);
            let handle = echo
                .rsplit("# handle ")
                .next()
                .map(|h| h.trim().to_string())
                .expect("a handle");
            eprintln!(
                "round {round}: {client} -> {server} without:        {}",
                percentiles(time())
            );
            run(&[
                "nft",
                "delete",
                "rule",
                "ip",
                "compose_fleet",
                "forward",
                "handle",
                &handle,
            ]);
        }
        drop(sandboxes);
    });
}

/// The generic netlink socket kernel WireGuard is configured through, on the real kernel: the
/// controller resolves its own family, and `wireguard` exactly when the kernel has WireGuard
/// (this machine's does not: then ENOENT, which makes the agent fall back to userspace).
#[test]
fn generic_netlink_families_resolve_and_a_kernel_without_wireguard_says_so() {
    use compose_fleet_agent::network::netlink::Netlink as Socket;
    use compose_fleet_agent::network::wg::kernel::{no_family, resolve_family};
    let mut sock = Socket::open(netlink_sys::constants::NETLINK_GENERIC).expect("opens");
    // GENL_ID_CTRL, fixed by linux/genetlink.h.
    assert_eq!(resolve_family(&mut sock, "nlctrl").expect("nlctrl"), 16);
    let has_wireguard = std::path::Path::new("/sys/module/wireguard").exists();
    match resolve_family(&mut sock, "wireguard") {
        Ok(id) => assert!(has_wireguard && id > 16, "family {id}"),
        Err(e) => {
            assert!(no_family(&e), "{e}");
            eprintln!("this kernel has no WireGuard: {e}");
        }
    }
}

/// Set in the child of [`network_setup_needs_no_tools_and_no_path`].
const HIDDEN_CHILD: &str = "CF_TEST_HIDDEN_TOOLS_CHILD";

/// The agent's network setup runs with `ip`, `nft`, `wg` and `iptables` hidden and `PATH`
/// empty: this test runs [`hidden_tools_child`] in a new process whose mount namespace has empty
/// directories over `/usr/sbin`, `/usr/bin`, `/sbin` and `/bin` (every tool is gone), in a fresh
/// network namespace, with an empty environment. The child sets up two pods (bridge, veths,
/// addresses, routes, our nftables table with a published port), checks that they reach each
/// other and the published port, brings the mesh device up (kernel WireGuard or, on a kernel
/// without it, the userspace device) and removes everything.
#[test]
fn network_setup_needs_no_tools_and_no_path() {
    use std::os::unix::process::CommandExt;
    let test = "network_setup_needs_no_tools_and_no_path";
    if !is_root(test) {
        return;
    }
    let dirs: Vec<std::ffi::CString> = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .filter(|d| {
            // Merged /usr: /sbin and /bin are symlinks to what is hidden already.
            std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir())
        })
        .map(|d| std::ffi::CString::new(*d).unwrap())
        .collect();
    let (root, tmpfs, none) = (c"/", c"tmpfs", c"none");
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "hidden_tools_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env(HIDDEN_CHILD, "1");
    // SAFETY: only raw syscalls between fork and exec, on memory made before the fork.
    unsafe {
        child.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for d in &dirs {
                if libc::mount(
                    tmpfs.as_ptr(),
                    d.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = child
        .output()
        .expect("runs the test binary in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{}", stderr.trim());
}

/// The body of [`network_setup_needs_no_tools_and_no_path`]; does nothing unless run by it.
#[test]
#[ignore]
fn hidden_tools_child() {
    use compose_fleet_agent::network::mesh::{MeshKernel, System};
    use compose_fleet_agent::network::wg::userspace::PeerConfig;
    if std::env::var_os(HIDDEN_CHILD).is_none() {
        return;
    }
    assert_eq!(std::env::var_os("PATH"), None, "PATH is empty");
    for tool in ["ip", "nft", "wg", "iptables"] {
        assert!(Command::new(tool).output().is_err(), "{tool} runs");
        for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
            let path = Path::new(dir).join(tool);
            assert!(!path.exists(), "{} is there", path.display());
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sandboxes, netns) = pod_sandboxes(tmp.path(), &["a", "b"]);
    let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
    let warnings = net
        .configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .expect("configures");
    assert!(warnings.is_empty(), "{warnings:?}");
    let a = net
        .attach("p", "a-1", &netns[0], &[port(8080, 80, "tcp", None)])
        .unwrap()
        .expect("an address");
    let b = net
        .attach("p", "b-1", &netns[1], &[])
        .unwrap()
        .expect("an address");
    // Pod to pod, and the published port from the host.
    let peer = serve_tcp(netns[0].clone(), "0.0.0.0:80", "from a");
    let got = in_ns(&netns[1], move || fetch(&format!("{a}:80")));
    assert_eq!(got, "from a");
    assert_eq!(peer.recv().unwrap().ip(), b);
    let _peer = serve_tcp(netns[0].clone(), "0.0.0.0:80", "published");
    assert_eq!(fetch("10.213.1.1:8080"), "published");

    // The mesh device: kernel WireGuard where the kernel has it, else the userspace one.
    let device = System
        .start(
            tmp.path(),
            51820,
            &[PeerConfig {
                host: "h2".into(),
                public_key: [9; 32],
                endpoint: "10.213.1.99:51820".parse().unwrap(),
                allowed: "10.213.2.0/24".parse().unwrap(),
            }],
        )
        .expect("a mesh device");
    let links = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert!(links.contains("cfwg0:"), "{links}");
    eprintln!("mesh device: {}", device.kind().as_str());
    if !Path::new("/sys/module/wireguard").exists() {
        assert_eq!(
            device.kind(),
            compose_fleet_agent::proto::mesh::DeviceKind::Userspace,
            "this kernel has no WireGuard"
        );
    }
    device.remove();
    net.detach("p", "a-1").unwrap();
    net.detach("p", "b-1").unwrap();
    let links = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let names: Vec<&str> = links
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"], "only loopback is left");
    drop(sandboxes);
}

/// A pod attached by an older agent (its address a /24 on the subnet, its bridge port not
/// isolated: pods of the host reach each other on the bridge, past the isolation rules) is
/// brought to the current shape when the daemon starts, in place: the same address, the routes
/// via the gateway, the port isolated (unless br_netfilter filters bridged traffic).
#[test]
fn a_pod_of_an_older_agent_gets_a_32_and_an_isolated_port_in_place() {
    let test = "a_pod_of_an_older_agent_gets_a_32_and_an_isolated_port_in_place";
    if !is_root(test) || !have("ip", test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (sandboxes, netns) = pod_sandboxes(tmp.path(), &["a", "b"]);
        let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        let a = net.attach("p", "a-1", &netns[0], &[]).unwrap().unwrap();
        net.attach("p", "b-1", &netns[1], &[]).unwrap().unwrap();
        // What an older agent made of pod a.
        in_ns(&netns[0], move || {
            run(&["ip", "addr", "del", &format!("{a}/32"), "dev", "eth0"]);
            run(&["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
            run(&["ip", "route", "replace", "default", "via", "10.213.1.1"]);
        });
        let host_if = compose_fleet_agent::network::host_if(a);
        run(&[
            "ip",
            "link",
            "set",
            &host_if,
            "type",
            "bridge_slave",
            "isolated",
            "off",
        ]);
        let shape = |netns: &Path| {
            in_ns(netns, || {
                (
                    run(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
                    run(&["ip", "-4", "route", "show"]),
                )
            })
        };
        let (addrs, _) = shape(&netns[0]);
        assert!(addrs.contains(&format!("{a}/24")), "{addrs}");

        let ns = netns.clone();
        let changed = net.refresh_pods(move |_, pod| match pod {
            "a-1" => Some(ns[0].clone()),
            "b-1" => Some(ns[1].clone()),
            _ => None,
        });
        assert_eq!(changed, ["p/a-1"], "only the old pod changes");
        let (addrs, routes) = shape(&netns[0]);
        assert!(
            addrs.contains(&format!("{a}/32")) && !addrs.contains("/24"),
            "{addrs}"
        );
        assert!(
            routes.contains("default via 10.213.1.1 dev eth0") && !routes.contains("10.213.1.0/24"),
            "{routes}"
        );
        let port = json(&["ip", "-d", "-j", "link", "show", &host_if]);
        let isolated = port[0]["linkinfo"]["info_slave_data"]["isolated"].as_bool();
        assert_eq!(
            isolated,
            Some(!compose_fleet_agent::network::kernel::bridged_ipv4_is_filtered()),
            "{port}"
        );
        // Still reachable at the same address, from the other pod; and a second start is a no-op.
        let _server = serve_tcp(netns[0].clone(), "0.0.0.0:80", "still a");
        let got = in_ns(&netns[1], move || fetch(&format!("{a}:80")));
        assert_eq!(got, "still a");
        let ns = netns.clone();
        assert!(net.refresh_pods(move |_, _| Some(ns[0].clone())).is_empty());
        net.detach("p", "a-1").unwrap();
        net.detach("p", "b-1").unwrap();
        drop(sandboxes);
    });
}

/// A neighbour host on a point-to-point uplink (`up0` here, 10.99.1.1; `nb0` there, 10.99.1.2)
/// that also holds 10.213.2.5, a pod address of "host 2": an uplink that is not a bridge, so the
/// fast path also takes packets coming in from it.
fn p2p_with_a_remote_pod(neighbour: &Path) {
    let ns = neighbour.to_str().expect("a UTF-8 path");
    run(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "nb0",
    ]);
    run(&["ip", "link", "set", "nb0", "netns", ns]);
    run(&["ip", "addr", "add", "10.99.1.1/24", "dev", "up0"]);
    run(&["ip", "link", "set", "up0", "up"]);
    in_ns(neighbour, || {
        for cmd in [
            "ip link set lo up",
            "ip addr add 10.99.1.2/24 dev nb0",
            "ip addr add 10.213.2.5/32 dev nb0",
            "ip link set nb0 up",
            "ip route add 10.213.1.0/24 via 10.99.1.1 src 10.213.2.5",
        ] {
            run(&cmd.split(' ').collect::<Vec<_>>());
        }
    });
}

/// Sends `bytes` from namespace `from` to a server at `to` in namespace `server`; the number of
/// bytes the server read.
fn send_bulk(from: &Path, server: &Path, to: &'static str, bytes: usize) -> usize {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = server.to_path_buf();
    let port = to.rsplit_once(':').expect("addr:port").1.to_string();
    let reader = std::thread::spawn(move || {
        in_ns(&server, move || {
            let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("binds");
            ready_tx.send(()).unwrap();
            let (mut s, _) = listener.accept().expect("accepts");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).map(|_| sink.len()).unwrap_or(0)
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    in_ns(from, move || {
        let mut s = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        let chunk = vec![7u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("sends");
            left -= n;
        }
    });
    reader.join().expect("the server thread")
}

/// Packets and bytes the probe chain counted (the last `counter` of table `probe`).
fn probe_count() -> (u64, u64) {
    let rules = json(&["nft", "-j", "list", "table", "ip", "probe"]);
    let counter = rules["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .find_map(|e| e.get("counter").cloned())
        .expect("the probe's counter");
    (
        counter["packets"].as_u64().unwrap(),
        counter["bytes"].as_u64().unwrap(),
    )
}

/// Pod-to-pod packets between pods that share a network take the fast path: once the host has
/// resolved the neighbour, they skip the host's IP layer (no forward hook sees them), between two
/// pods of this host and both ways between a pod here and a pod of another host behind a plain
/// uplink. Pods on different networks still do not reach each other, a VIP (NAT: the kernel's
/// path) still answers, and with the last pod the filters and the qdiscs they needed are gone.
#[test]
fn pod_to_pod_packets_take_the_fast_path_and_isolation_still_holds() {
    let test = "pod_to_pod_packets_take_the_fast_path_and_isolation_still_holds";
    if !is_root(test) || !have("ip", test) || !have("nft", test) || !have("tc", test) {
        return;
    }
    in_fresh_host(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (sandboxes, ns) = pod_sandboxes(tmp.path(), &["a", "b", "c", "neighbour", "d"]);
        let (a, b, c, neighbour) = (&ns[0], &ns[1], &ns[2], &ns[3]);
        p2p_with_a_remote_pod(neighbour);
        let net = Network::open(tmp.path(), Arc::new(Netlink)).unwrap();
        net.configure(&host_1_with_host_2_via("10.99.1.2"))
            .expect("configures");
        // The host's routes to host 2 stay: the pods' links, rules, filters and qdiscs go.
        let before = host_state();
        let ip_a = net.attach("p", "a-1", a, &[]).unwrap().unwrap();
        let ip_b = net.attach("p", "b-1", b, &[]).unwrap().unwrap();
        let ip_c = net
            .attach_to("p", "c-1", c, &[], &on(&["back"], &[]))
            .unwrap()
            .unwrap();
        // `api`: a VIP, its replica the pod of host 2, on the default network.
        net.set_services(api_on_host_2()).expect("takes the map");
        let filters = run(&["tc", "filter", "show", "dev", "up0", "ingress"]);
        assert!(filters.contains("compose_fleet"), "up0: {filters}");
        // What `hosts` reports, read from the kernel.
        assert_eq!(fastpath::status().as_deref(), Some("on"));
        // Every forwarded pod-to-pod packet, counted before our forward chain decides.
        run(&[
            "nft",
            "add table ip probe; \
             add chain ip probe fw { type filter hook forward priority -10; }; \
             add rule ip probe fw ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 counter",
        ]);
        // Neighbours resolved the kernel's way (the fast path needs them), then counted afresh.
        let target = |ip: Ipv4Addr, port: u16| -> &'static str {
            Box::leak(format!("{ip}:{port}").into_boxed_str())
        };
        let remote: Ipv4Addr = "10.213.2.5".parse().unwrap();
        for (from, server, to) in [
            (a, b, target(ip_b, 7100)),
            (a, neighbour, target(remote, 7101)),
        ] {
            assert_eq!(send_bulk(from, server, to, 1000), 1000);
        }
        let (_, warm) = probe_count();

        let mib = 16 << 20;
        assert_eq!(send_bulk(a, b, target(ip_b, 7102), mib), mib, "a to b");
        assert_eq!(
            send_bulk(a, neighbour, target(remote, 7103), mib),
            mib,
            "a to host 2"
        );
        assert_eq!(
            send_bulk(neighbour, a, target(ip_a, 7104), mib),
            mib,
            "host 2 to a"
        );
        let (packets, bytes) = probe_count();
        assert!(
            bytes - warm < (3 * mib as u64) / 100,
            "{} of {} bytes crossed the forward hook ({packets} packets in all)",
            bytes - warm,
            3 * mib
        );

        // Isolation: c (network `back`) reaches neither a nor the pod of host 2, nor they it.
        for (from, to) in [(a, ip_c), (c, ip_a), (c, remote)] {
            let r = in_ns(from, move || {
                TcpStream::connect_timeout(
                    &SocketAddr::new(to.into(), 7105),
                    Duration::from_millis(700),
                )
            });
            assert!(
                matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
                "a connection across networks to {to}: {r:?}"
            );
        }
        // Through the VIP (NAT, tracked): answered from the VIP.
        let _peer = serve_tcp(neighbour.clone(), "0.0.0.0:7106", "api over the VIP");
        assert_eq!(in_ns(a, || fetch("10.214.0.7:7106")), "api over the VIP");

        // An address given again to a new pod: the old pod's neighbour entry (a MAC nobody has
        // now) goes when the new pod's link is made, or the fast path would send to it.
        let next: Ipv4Addr = "10.213.1.5".parse().unwrap();
        run(&[
            "ip",
            "neigh",
            "replace",
            "10.213.1.5",
            "dev",
            BRIDGE,
            "lladdr",
            "02:00:00:00:00:01",
            "nud",
            "stale",
        ]);
        let ns_d = &ns[4];
        let ip_d = net.attach("p", "d-1", ns_d, &[]).unwrap().unwrap();
        assert_eq!(ip_d, next, "the address the old entry names");
        // The bridge keeps its own fixed MAC as ports come and go (else it takes the lowest
        // port's, flushing the host's neighbours and leaving pods a gateway MAC that dies with
        // that port): a's gateway entry is still it.
        let mac = "02:cf:0a:d5:01:01";
        assert!(run(&["ip", "-br", "link", "show", BRIDGE]).contains(mac));
        assert!(in_ns(a, || run(&["ip", "neigh", "show", "10.213.1.1"])).contains(mac));
        let (_, before_d) = probe_count();
        assert_eq!(send_bulk(a, ns_d, target(ip_d, 7107), mib), mib, "a to d");
        let (_, after_d) = probe_count();
        assert!(
            after_d - before_d < (mib as u64) / 10,
            "a to d crossed the forward hook: {} bytes",
            after_d - before_d
        );

        // An uplink whose MTU is under the pods': the kernel's path takes pod packets out of it
        // (and tells the pod the size that fits), the data arrives whole.
        run(&["ip", "link", "set", "up0", "mtu", "1400"]);
        in_ns(neighbour, || {
            run(&["ip", "link", "set", "nb0", "mtu", "1400"])
        });
        net.configure(&host_1_with_host_2_via("10.99.1.2"))
            .expect("configures again");
        let (_, small_before) = probe_count();
        assert_eq!(
            send_bulk(a, neighbour, target(remote, 7108), mib),
            mib,
            "a to host 2, MTU 1400"
        );
        let (_, small_after) = probe_count();
        assert!(
            small_after - small_before > (mib as u64) * 9 / 10,
            "a to host 2 over the small uplink skipped the kernel: {} bytes seen",
            small_after - small_before
        );
        run(&["ip", "link", "set", "up0", "mtu", "1500"]);

        run(&["nft", "delete", "table", "ip", "probe"]);
        for pod in ["a-1", "b-1", "c-1", "d-1"] {
            net.detach("p", pod).unwrap();
        }
        assert_eq!(
            host_state(),
            before,
            "the host's own networking (tc included) as it was"
        );
        assert_eq!(fastpath::status(), None, "no pods, no fast path to report");
        drop(sandboxes);
    });
}
