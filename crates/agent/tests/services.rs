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
        kernel.replace_rules(&rules).expect("rules accepted");

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
