//! Service VIP rules on the real kernel (needs root), in a throwaway network namespace: what the
//! agent encodes by hand is what `nft -j list ruleset` shows (a numgen cascade of DNATs per VIP,
//! a drop for the rest of the service range), and connections to a VIP land on every replica.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use compose_fleet_agent::network::kernel::{NetKernel, Netlink};
use compose_fleet_agent::network::nft::Ruleset;
use compose_fleet_agent::network::vip::Vip;

mod support;

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

fn in_fresh_host<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        run(&["ip", "link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn ruleset(vips: Vec<Vip>) -> Ruleset {
    Ruleset {
        fleet: "10.213.0.0/16".parse().unwrap(),
        subnet: "10.213.1.0/24".parse().unwrap(),
        published: vec![],
        vips,
        service_range: Some("10.214.0.0/16".parse().unwrap()),
        isolation: Default::default(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn vip_rules_are_what_nft_shows_and_spread_connections_over_replicas() {
    if !support::is_root(
        "vip_rules_are_what_nft_shows_and_spread_connections_over_replicas",
        "network namespaces and nftables",
    ) || Command::new("nft").arg("--version").output().is_err()
    {
        return;
    }
    in_fresh_host(|| {
        // Three "replicas": addresses on a link of this namespace, each with a listener that
        // says who it is.
        run(&[
            "ip", "link", "add", "rep", "type", "veth", "peer", "name", "rep2",
        ]);
        run(&["ip", "link", "set", "rep", "up"]);
        run(&["ip", "link", "set", "rep2", "up"]);
        let replicas = ["10.213.2.2", "10.213.3.2", "10.213.3.3"];
        for r in replicas {
            run(&["ip", "addr", "add", &format!("{r}/32"), "dev", "rep"]);
        }
        // A route for the VIP range so that the output path reaches the nat hook (a host's
        // default route does this).
        run(&["ip", "route", "add", "10.214.0.0/16", "dev", "rep2"]);
        let kernel = Netlink;
        let rules = ruleset(vec![
            Vip {
                addr: ip("10.214.0.9"),
                backends: replicas.iter().map(|r| ip(r)).collect(),
            },
            Vip {
                addr: ip("10.214.0.5"),
                backends: vec![],
            },
        ]);
        kernel.replace_rules(&rules, None).expect("rules accepted");

        let json: serde_json::Value =
            serde_json::from_str(&run(&["nft", "-j", "list", "ruleset"])).unwrap();
        let chain = |name: &str| -> Vec<serde_json::Value> {
            json["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o.get("rule"))
                .filter(|r| r["table"] == "compose_fleet" && r["chain"] == name)
                .map(|r| r["expr"].clone())
                .collect()
        };
        let services = chain("services");
        assert_eq!(services.len(), 5, "{services:#?}");
        let daddr = |v: &str| serde_json::json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": v}});
        let numgen = |m: u32| serde_json::json!({"match": {"op": "==", "left": {"numgen": {"mode": "random", "mod": m, "offset": 0}}, "right": 0}});
        let dnat = |a: &str| serde_json::json!({"dnat": {"addr": a}});
        assert_eq!(
            services[0],
            serde_json::json!([daddr("10.214.0.5"), {"drop": null}])
        );
        assert_eq!(
            services[1],
            serde_json::json!([daddr("10.214.0.9"), numgen(3), dnat("10.213.2.2")])
        );
        assert_eq!(
            services[2],
            serde_json::json!([daddr("10.214.0.9"), numgen(2), dnat("10.213.3.2")])
        );
        assert_eq!(
            services[3],
            serde_json::json!([daddr("10.214.0.9"), dnat("10.213.3.3")])
        );
        assert_eq!(
            services[4],
            serde_json::json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.214.0.0", "len": 16}}}}, {"drop": null}])
        );
        let jump = serde_json::json!([{"jump": {"target": "services"}}]);
        assert_eq!(chain("prerouting")[0], jump);
        assert_eq!(chain("output")[0], jump);

        // Connections from this host to the VIP reach every replica.
        let listeners: Vec<_> = replicas
            .iter()
            .map(|r| {
                let l = TcpListener::bind((ip(r), 8080)).unwrap();
                let me = r.to_string();
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        let Ok(mut s) = s else { break };
                        let _ = s.write_all(me.as_bytes());
                    }
                })
            })
            .collect();
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..60 {
            let mut s = TcpStream::connect_timeout(
                &"10.214.0.9:8080".parse().unwrap(),
                Duration::from_secs(2),
            )
            .expect("the VIP answers");
            let mut who = String::new();
            s.read_to_string(&mut who).unwrap();
            *seen.entry(who).or_default() += 1;
        }
        assert_eq!(seen.len(), 3, "every replica answered: {seen:?}");
        // A VIP without replicas, and an address no service has, are dropped (not routed).
        for dead in ["10.214.0.5:8080", "10.214.9.9:8080"] {
            assert!(
                TcpStream::connect_timeout(&dead.parse().unwrap(), Duration::from_millis(300))
                    .is_err(),
                "{dead}"
            );
        }
        kernel.remove_rules().unwrap();
        drop(listeners);
    });
}

/// p50 and p99 of `v`, as text.
fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:?}, p99 {:?}, max {:?} over {}",
        v[v.len() / 2],
        v[v.len() * 99 / 100],
        v[v.len() - 1],
        v.len()
    )
}

/// Connection set-up through a VIP against the replica's own address, with 10 and 1,000 services
/// in the table (each with 3 replicas). The VIP rules are a linear list, so the last service's
/// VIP is the worst case and the first the best. Connections come from the host itself (the
/// output hook runs the same `services` chain as prerouting does for pods).
#[test]
#[ignore]
fn bench_vip_connection_setup() {
    if !support::is_root(
        "bench_vip_connection_setup",
        "network namespaces and nftables",
    ) {
        return;
    }
    in_fresh_host(|| {
        run(&[
            "ip", "link", "add", "rep", "type", "veth", "peer", "name", "rep2",
        ]);
        run(&["ip", "link", "set", "rep", "up"]);
        run(&["ip", "link", "set", "rep2", "up"]);
        run(&["ip", "route", "add", "10.214.0.0/16", "dev", "rep2"]);
        let replicas = ["10.213.2.2", "10.213.2.3", "10.213.2.4"];
        for r in replicas {
            run(&["ip", "addr", "add", &format!("{r}/32"), "dev", "rep"]);
            let l = TcpListener::bind((ip(r), 8080)).unwrap();
            std::thread::spawn(move || {
                for s in l.incoming() {
                    drop(s);
                }
            });
        }
        const CONNECTIONS: usize = 2000;
        let time = |addr: &str| {
            let addr = addr.parse().unwrap();
            (0..CONNECTIONS)
                .map(|_| {
                    let t = std::time::Instant::now();
                    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                    let d = t.elapsed();
                    drop(s);
                    d
                })
                .collect::<Vec<_>>()
        };
        for services in [10u32, 1000] {
            let vips: Vec<Vip> = (0..services)
                .map(|i| Vip {
                    addr: Ipv4Addr::from(u32::from(ip("10.214.0.1")) + i),
                    backends: replicas.iter().map(|r| ip(r)).collect(),
                })
                .collect();
            let first = vips[0].addr;
            let last = vips[vips.len() - 1].addr;
            Netlink.replace_rules(&ruleset(vips), None).unwrap();
            eprintln!(
                "{services} services: direct {}",
                percentiles(time("10.213.2.3:8080"))
            );
            eprintln!(
                "{services} services: first VIP {}",
                percentiles(time(&format!("{first}:8080")))
            );
            eprintln!(
                "{services} services: last VIP {}",
                percentiles(time(&format!("{last}:8080")))
            );
        }
        Netlink.remove_rules().unwrap();
    });
}

/// DNS answer latency at 1,000 queries/s from a pod's address: service names answered by the
/// agent, and names forwarded to an upstream (a local responder that answers at once, so the
/// figure is our forwarder's own cost).
#[test]
#[ignore]
fn bench_dns_latency() {
    use compose_fleet_agent::network::{dns, kernel::Recording, Network};
    use compose_fleet_agent::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
    use compose_fleet_agent::proto::HostNetwork;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::sync::Arc;

    if !support::is_root(
        "bench_dns_latency",
        "a network namespace with a pod address",
    ) {
        return;
    }
    in_fresh_host(|| {
        run(&["ip", "addr", "add", "10.213.1.2/32", "dev", "lo"]);
        let tmp = tempfile::tempdir().unwrap();
        let net = Arc::new(Network::open(tmp.path(), Arc::new(Recording::default())).unwrap());
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        let client_ip = net
            .attach("p", "client-1", std::path::Path::new("/none"), &[])
            .unwrap();
        assert_eq!(client_ip, Some(ip("10.213.1.2")));
        let endpoint = |i: u32| Endpoint {
            replica: i,
            pod: format!("rr-{i}"),
            host: "h2".into(),
            addr: Ipv4Addr::new(10, 213, 2, i as u8 + 1),
            healthy: true,
        };
        net.set_services(ServiceMap {
            project: "p".into(),
            services: vec![
                Service {
                    name: "api".into(),
                    endpoint_mode: EndpointMode::Vip,
                    vip: Some(ip("10.214.0.9")),
                    networks: vec![],
                    aliases: vec![],
                    container_name: None,
                    replicas: vec![endpoint(1)],
                },
                Service {
                    name: "rr".into(),
                    endpoint_mode: EndpointMode::Dnsrr,
                    vip: None,
                    networks: vec![],
                    aliases: vec![],
                    container_name: None,
                    replicas: (1..=3).map(endpoint).collect(),
                },
            ],
        })
        .unwrap();
        // The upstream: answers every query at once with an empty NOERROR.
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = upstream.recv_from(&mut buf) {
                if let Ok(q) = Message::from_vec(&buf[..n]) {
                    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                    r.add_queries(q.queries);
                    let _ = upstream.send_to(&r.to_vec().unwrap(), from);
                }
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap();
        let server_addr = server.local_addr().unwrap();
        rt.spawn(dns::run(Arc::new(server), net, vec![upstream_addr]));

        let client = std::net::UdpSocket::bind("10.213.1.2:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        const QUERIES: u16 = 5000;
        let (mut local, mut forwarded) = (Vec::new(), Vec::new());
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        for i in 0..QUERIES {
            // Paced at 1,000 queries/s.
            let due = start + Duration::from_millis(u64::from(i));
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            let name = ["api.", "rr.", "example.com."][usize::from(i % 3)];
            let mut m = Message::query();
            m.metadata.id = i;
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            let t = std::time::Instant::now();
            client.send_to(&m.to_vec().unwrap(), server_addr).unwrap();
            loop {
                let n = client.recv(&mut buf).expect("an answer within 2 s");
                let r = Message::from_vec(&buf[..n]).unwrap();
                if r.metadata.id == i {
                    if name == "example.com." {
                        forwarded.push(t.elapsed());
                    } else {
                        assert!(!r.answers.is_empty(), "{name}");
                        local.push(t.elapsed());
                    }
                    break;
                }
            }
        }
        eprintln!(
            "DNS at 1,000 q/s over {:?}: service names {}",
            start.elapsed(),
            percentiles(local)
        );
        eprintln!("DNS at 1,000 q/s: forwarded {}", percentiles(forwarded));
        drop(rt);
    });
}

/// DNS over TCP on the same handler as UDP: two length-prefixed queries on one connection from a
/// pod's address, a service name answered by the agent and another name forwarded to an upstream
/// over TCP.
#[test]
fn dns_answers_over_tcp_like_udp_and_forwards_over_tcp() {
    use compose_fleet_agent::network::{dns, kernel::Recording, Network};
    use compose_fleet_agent::proto::service::{Endpoint, EndpointMode, Service, ServiceMap};
    use compose_fleet_agent::proto::HostNetwork;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    if !support::is_root(
        "dns_answers_over_tcp_like_udp_and_forwards_over_tcp",
        "a network namespace with a pod address",
    ) {
        return;
    }
    in_fresh_host(|| {
        run(&["ip", "addr", "add", "10.213.1.2/32", "dev", "lo"]);
        let tmp = tempfile::tempdir().unwrap();
        let net = Arc::new(Network::open(tmp.path(), Arc::new(Recording::default())).unwrap());
        net.configure(&HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![],
            mesh: None,
        })
        .unwrap();
        net.attach("p", "client-1", std::path::Path::new("/none"), &[])
            .unwrap();
        net.set_services(ServiceMap {
            project: "p".into(),
            services: vec![Service {
                name: "api".into(),
                endpoint_mode: EndpointMode::Vip,
                vip: Some(ip("10.214.0.9")),
                networks: vec![],
                aliases: vec![],
                container_name: None,
                replicas: vec![Endpoint {
                    replica: 1,
                    pod: "api-1".into(),
                    host: "h2".into(),
                    addr: ip("10.213.2.2"),
                    healthy: true,
                }],
            }],
        })
        .unwrap();
        // A TCP upstream that answers with one A record, 192.0.2.7, so a forwarded answer is told
        // from anything else.
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in upstream.incoming().flatten() {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut q).unwrap();
                let q = Message::from_vec(&q).unwrap();
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                let name = q.queries[0].name().clone();
                r.add_queries(q.queries);
                r.add_answers([hickory_proto::rr::Record::from_rdata(
                    name,
                    60,
                    RData::A(hickory_proto::rr::rdata::A(ip("192.0.2.7"))),
                )]);
                let bytes = r.to_vec().unwrap();
                s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
                s.write_all(&bytes).unwrap();
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = listener.local_addr().unwrap();
            tokio::spawn(dns::run_tcp(listener, net, vec![upstream_addr]));
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("10.213.1.2:0".parse().unwrap()).unwrap();
            let mut s = socket.connect(server).await.unwrap();
            let mut answers = Vec::new();
            for (id, name) in [(1u16, "api."), (2, "example.com.")] {
                let mut m = Message::query();
                m.metadata.id = id;
                m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
                let bytes = m.to_vec().unwrap();
                s.write_all(&(bytes.len() as u16).to_be_bytes())
                    .await
                    .unwrap();
                s.write_all(&bytes).await.unwrap();
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await.unwrap();
                let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut buf).await.unwrap();
                let r = Message::from_vec(&buf).unwrap();
                assert_eq!(r.metadata.id, id);
                answers.push(
                    r.answers
                        .iter()
                        .map(|a| a.data.to_string())
                        .collect::<Vec<_>>(),
                );
            }
            assert_eq!(answers, [["10.214.0.9"], ["192.0.2.7"]]);
        });
    });
}
