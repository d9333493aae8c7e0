//! Placement: filters, scorers, pods, explanations, stickiness, and properties on random
//! projects and fleets (proptest), with an exhaustive check on tiny instances.

use std::collections::{BTreeMap, BTreeSet};

use compose_fleet::compose::model::Project;
use compose_fleet::inventory;
use compose_fleet::plan;
use compose_fleet::pods;
use compose_fleet::schedule::units::{self, Amount};
use compose_fleet::schedule::{self, Node, NodeState, Observed, Placement};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A project from the canonical (JSON) form of the compose model.
pub fn project(services: Value) -> Project {
    project_with(services, json!({}))
}

pub fn project_with(services: Value, volumes: Value) -> Project {
    let mut p: Project = serde_json::from_value(json!({
        "name": "test", "services": services, "volumes": volumes
    }))
    .expect("test project");
    for (name, s) in p.services.iter_mut() {
        s.name = name.clone();
    }
    p
}

/// A service with a reservation, replicas and extra keys merged in.
pub fn svc(cpus: f64, memory: &str, replicas: u32, extra: Value) -> Value {
    let mut v = json!({
        "image": "busybox",
        "deploy": {
            "replicas": replicas,
            "resources": { "reservations": { "cpus": cpus, "memory": memory } }
        }
    });
    merge(&mut v, extra);
    v
}

fn merge(into: &mut Value, extra: Value) {
    match (into, extra) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

pub fn port(published: u16) -> Value {
    json!({"mode": "ingress", "target": published, "published": published.to_string(), "protocol": "tcp"})
}

pub fn node(name: &str, cpus: f64, memory: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        arch: Some("x86_64".into()),
        allocatable: Amount::from_cpus(
            cpus,
            compose_fleet::compose::model::parse_bytes(memory).unwrap(),
        ),
        state: NodeState::Ready,
    }
}

fn place(p: &Project, nodes: &[Node]) -> Placement {
    schedule::place(p, nodes, &[]).expect("placeable project")
}

/// service → hosts of its replicas, in replica order.
fn hosts_of(pl: &Placement, service: &str) -> Vec<String> {
    pl.replicas()
        .filter(|a| a.service == service)
        .map(|a| a.host.to_string())
        .collect()
}

fn explanations(pl: &Placement) -> Vec<String> {
    pl.unschedulable.iter().map(|u| u.explain()).collect()
}

#[test]
fn explains_with_a_reason_histogram() {
    let p = project(json!({
        "db": svc(1.0, "4g", 3, json!({"ports": [port(5432)]})),
        "other": svc(0.1, "64m", 1, json!({"ports": [port(5432)], "deploy": {"placement": {"constraints": ["node.labels.role == pg"]}}})),
    }));
    let nodes = vec![
        node("h1", 8.0, "2.5g", &[]),
        node("h2", 8.0, "2g", &[]),
        node("h3", 8.0, "1g", &[]),
        node("h4", 8.0, "8g", &[("role", "pg")]),
        node("h5", 8.0, "8g", &[("role", "pg")]),
    ];
    let pl = place(&p, &nodes);
    // `other` is placed first?  No: db is larger, so db takes h4 and h5; other finds no pg host
    // with 5432 free.
    assert_eq!(hosts_of(&pl, "db"), ["h4", "h5"]);
    assert_eq!(
        explanations(&pl),
        [
            "db (replica 3/3): 0/5 hosts fit — 3 lack memory (needs 4 GiB, most free 2.5 GiB), 2 have 5432/tcp taken",
            "other (replica 1/1): 0/5 hosts fit — 3 do not match `node.labels.role == pg`, 2 have 5432/tcp taken",
        ]
    );
}

#[test]
fn pods_are_placed_together() {
    let p = project_with(
        json!({
            "app": svc(1.0, "1g", 2, json!({})),
            "sidecar": svc(0.5, "256m", 2, json!({"network_mode": "service:app"})),
            "backup": svc(0.1, "64m", 1, json!({"volumes_from": ["db:ro"]})),
            "db": svc(1.0, "1g", 1, json!({"volumes": [{"type": "volume", "source": "data", "target": "/data"}]})),
            "dbtool": svc(0.1, "64m", 1, json!({"volumes": [{"type": "volume", "source": "data", "target": "/d"}]})),
            "ext": svc(0.1, "64m", 1, json!({"volumes": [{"type": "volume", "source": "shared", "target": "/s"}]})),
            "ext2": svc(0.1, "64m", 1, json!({"volumes": [{"type": "volume", "source": "shared", "target": "/s"}]})),
        }),
        json!({"data": {}, "shared": {"external": true}}),
    );
    let model = pods::of(&p);
    let pods: Vec<(&str, Vec<&str>)> = model
        .pods
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.services.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        pods,
        [
            ("app", vec!["app", "sidecar"]),
            ("backup", vec!["backup"]),
            ("db", vec!["db"]),
            ("dbtool", vec!["dbtool"]),
            ("ext", vec!["ext"]),
            ("ext2", vec!["ext2"]),
        ],
        "only network_mode shares a network namespace"
    );
    let colocations: Vec<Vec<String>> = model
        .colocations
        .iter()
        .map(|c| model.services_of(c))
        .collect();
    assert_eq!(
        colocations,
        vec![
            vec!["app".to_string(), "sidecar".into()],
            vec!["backup".into(), "db".into(), "dbtool".into()],
            vec!["ext".into()],
            vec!["ext2".into()],
        ],
        "volumes_from and shared local volumes put pods on one host; external volumes do not"
    );
    let nodes: Vec<Node> = (1..=4)
        .map(|i| node(&format!("h{i}"), 2.0, "2g", &[]))
        .collect();
    let pl = place(&p, &nodes);
    assert!(pl.unschedulable.is_empty(), "{:?}", explanations(&pl));
    assert_eq!(hosts_of(&pl, "app"), hosts_of(&pl, "sidecar"));
    assert_eq!(hosts_of(&pl, "db"), hosts_of(&pl, "backup"));
    assert_eq!(hosts_of(&pl, "db"), hosts_of(&pl, "dbtool"));
    let pod_of: BTreeMap<_, _> = pl.replicas().map(|a| (a.service, a.pod)).collect();
    assert_eq!(pod_of["sidecar"], "app");
    assert_eq!(
        pod_of["dbtool"], "dbtool",
        "a colocated pod keeps its own name"
    );
}

#[test]
fn a_pod_that_fits_nowhere_is_explained_as_a_pod() {
    let p = project(json!({
        "app": svc(1.5, "1g", 1, json!({})),
        "sidecar": svc(1.0, "1g", 1, json!({"network_mode": "service:app"})),
    }));
    let pl = place(&p, &[node("a", 2.0, "4g", &[]), node("b", 2.0, "4g", &[])]);
    assert!(
        pl.assignments.is_empty(),
        "never split a pod: {:?}",
        pl.assignments
    );
    assert_eq!(
        explanations(&pl),
        ["app+sidecar (replica 1/1): 0/2 hosts fit — 2 lack cpu (needs 2.5, most free 2)"]
    );
}

#[test]
fn replicas_come_from_deploy_scale_and_global() {
    let p = project(json!({
        "a": { "image": "x", "deploy": { "replicas": 3 } },
        "b": { "image": "x", "scale": 2 },
        "c": { "image": "x" },
        "d": { "image": "x", "deploy": { "mode": "global", "placement": { "constraints": ["node.labels.edge == yes"] } } },
        "z": { "image": "x", "deploy": { "replicas": 0 } },
    }));
    let nodes = vec![
        node("e1", 4.0, "4g", &[("edge", "yes")]),
        node("n1", 4.0, "4g", &[]),
        node("e2", 4.0, "4g", &[("edge", "yes")]),
    ];
    let pl = place(&p, &nodes);
    let count = |s: &str| hosts_of(&pl, s).len();
    assert_eq!(
        (count("a"), count("b"), count("c"), count("z")),
        (3, 2, 1, 0)
    );
    assert_eq!(
        hosts_of(&pl, "d"),
        ["e1", "e2"],
        "global: one per eligible host"
    );
}

#[test]
fn demand_defaults_to_limits_then_a_small_default() {
    let p = project(json!({
        "r": { "image": "x", "deploy": { "resources": { "reservations": { "cpus": 0.5, "memory": "1g" }, "limits": { "cpus": 2, "memory": "4g" } } } },
        "l": { "image": "x", "deploy": { "resources": { "limits": { "cpus": 2, "memory": "4g" } } } },
        "legacy": { "image": "x", "cpus": 1.5, "mem_limit": "2g" },
        "none": { "image": "x" },
    }));
    let d = plan::demands(&p);
    assert_eq!(d["r"], Amount::from_cpus(0.5, 1 << 30));
    assert_eq!(d["l"], Amount::from_cpus(2.0, 4 << 30));
    assert_eq!(d["legacy"], Amount::from_cpus(1.5, 2 << 30));
    assert_eq!(
        d["none"],
        Amount {
            cpu_millis: units::DEFAULT_CPU_MILLIS,
            memory: units::DEFAULT_MEMORY
        }
    );
}

#[test]
fn max_replicas_per_node_and_spread() {
    let p = project(json!({
        "web": svc(0.1, "64m", 4, json!({"deploy": {"placement": {"max_replicas_per_node": 2}}})),
        "api": svc(0.1, "64m", 3, json!({})),
    }));
    let nodes = vec![node("a", 8.0, "8g", &[]), node("b", 8.0, "8g", &[])];
    let pl = place(&p, &nodes);
    let web = hosts_of(&pl, "web");
    assert_eq!(web.iter().filter(|h| *h == "a").count(), 2);
    assert_eq!(web.iter().filter(|h| *h == "b").count(), 2);
    let api: BTreeSet<_> = hosts_of(&pl, "api").into_iter().collect();
    assert_eq!(
        api.len(),
        2,
        "replicas of one service spread over hosts that fit equally"
    );
    let p3 = project(json!({
        "web": svc(0.1, "64m", 5, json!({"deploy": {"placement": {"max_replicas_per_node": 2}}})),
    }));
    let pl = place(&p3, &nodes);
    assert_eq!(
        explanations(&pl),
        ["web (replica 5/5): 0/2 hosts fit — 2 already run 2 (max_replicas_per_node: 2)"]
    );
}

#[test]
fn spread_preference_balances_zones() {
    let p = project(json!({
        "web": svc(0.5, "256m", 4, json!({"deploy": {"placement": {"preferences": [{"spread": "node.labels.zone"}]}}})),
    }));
    let nodes = vec![
        node("a1", 8.0, "8g", &[("zone", "a")]),
        node("a2", 8.0, "8g", &[("zone", "a")]),
        node("a3", 8.0, "8g", &[("zone", "a")]),
        node("b1", 8.0, "8g", &[("zone", "b")]),
    ];
    let pl = place(&p, &nodes);
    let hosts = hosts_of(&pl, "web");
    let in_b = hosts.iter().filter(|h| *h == "b1").count();
    assert_eq!(in_b, 2, "two of four replicas in zone b: {hosts:?}");
}

#[test]
fn draining_and_unreachable_hosts_get_nothing_new() {
    let p = project(json!({ "web": svc(0.5, "256m", 2, json!({})) }));
    let mut nodes = vec![
        node("d", 8.0, "8g", &[]),
        node("u", 8.0, "8g", &[]),
        node("ok", 8.0, "8g", &[]),
    ];
    nodes[0].state = NodeState::Draining;
    nodes[1].state = NodeState::Unreachable;
    let pl = place(&p, &nodes);
    assert_eq!(hosts_of(&pl, "web"), ["ok", "ok"]);
    let mut all_bad = nodes.clone();
    all_bad[2].state = NodeState::Draining;
    let pl = place(&p, &all_bad);
    assert_eq!(
        explanations(&pl)[0],
        "web (replica 1/2): 0/3 hosts fit — 2 are draining, 1 is unreachable"
    );
}

/// `up --on-unreachable`: with `skip` the replicas observed on a host that does not answer stay
/// there (even with no capacity known for it); with `reschedule` the host is treated as gone
/// (none of its replicas passed) and they are packed onto the others, as far as they fit.
#[test]
fn replicas_on_an_unreachable_host_stay_unless_it_is_treated_as_gone() {
    let p = project(json!({ "web": svc(1.0, "1g", 3, json!({})) }));
    let mut nodes = vec![node("a", 2.0, "2g", &[]), node("lost", 2.0, "2g", &[])];
    nodes[1].state = NodeState::Unreachable;
    nodes[1].allocatable = Amount::default();
    let on = |replica, host: &str| Observed {
        service: "web".into(),
        replica,
        host: host.into(),
    };
    let kept = schedule::place(&p, &nodes, &[on(1, "a"), on(2, "lost"), on(3, "lost")]).unwrap();
    assert_eq!(hosts_of(&kept, "web"), ["a", "lost", "lost"]);
    assert!(kept.unschedulable.is_empty());
    let gone = schedule::place(&p, &nodes, &[on(1, "a")]).unwrap();
    assert_eq!(hosts_of(&gone, "web"), ["a", "a"]);
    assert_eq!(
        explanations(&gone),
        ["web (replica 3/3): 0/2 hosts fit — 1 is unreachable, 1 lacks memory (needs 1 GiB, most free 0 B)"]
    );
}

#[test]
fn constraints_select_hosts_and_platform_sets_arch() {
    let p = project(json!({
        "a": svc(0.1, "64m", 2, json!({"deploy": {"placement": {"constraints": ["node.hostname == h2"]}}})),
        "b": svc(0.1, "64m", 2, json!({"deploy": {"placement": {"constraints": ["node.labels.disk != hdd"]}}})),
        "c": svc(0.1, "64m", 1, json!({"platform": "linux/arm64"})),
    }));
    let mut nodes = vec![
        node("h1", 8.0, "8g", &[("disk", "hdd")]),
        node("h2", 8.0, "8g", &[("disk", "ssd")]),
        node("h3", 8.0, "8g", &[]),
    ];
    nodes[2].arch = Some("aarch64".into());
    let pl = place(&p, &nodes);
    assert_eq!(hosts_of(&pl, "a"), ["h2", "h2"]);
    assert!(hosts_of(&pl, "b").iter().all(|h| h != "h1"));
    assert_eq!(hosts_of(&pl, "c"), ["h3"]);
}

#[test]
fn bad_constraints_are_project_errors() {
    let p = project(
        json!({ "a": svc(0.1, "64m", 1, json!({"deploy": {"placement": {"constraints": ["node.role == manager"]}}})) }),
    );
    let err = schedule::place(&p, &[node("h", 1.0, "1g", &[])], &[]).unwrap_err();
    let text = err.0[0].to_string();
    assert!(text.contains("service `a`"), "{text}");
    assert!(text.contains("node.role"), "{text}");
}

#[test]
fn ports_conflict_per_ip_and_protocol() {
    let p = project(json!({
        "any": svc(0.1, "64m", 1, json!({"ports": [port(80)]})),
        "ip1": svc(0.1, "64m", 1, json!({"ports": [{"mode": "host", "host_ip": "10.0.0.1", "target": 80, "published": "80", "protocol": "tcp"}]})),
        "ip2": svc(0.1, "64m", 1, json!({"ports": [{"mode": "host", "host_ip": "10.0.0.2", "target": 80, "published": "80", "protocol": "tcp"}]})),
        "udp": svc(0.1, "64m", 1, json!({"ports": [{"mode": "host", "target": 80, "published": "80", "protocol": "udp"}]})),
    }));
    let pl = place(&p, &[node("a", 8.0, "8g", &[]), node("b", 8.0, "8g", &[])]);
    assert!(pl.unschedulable.is_empty(), "{:?}", explanations(&pl));
    let any = &hosts_of(&pl, "any")[0];
    assert_ne!(&hosts_of(&pl, "ip1")[0], any);
    assert_ne!(&hosts_of(&pl, "ip2")[0], any);
}

#[test]
fn stickiness_keeps_running_replicas_in_place() {
    let p =
        project(json!({ "web": svc(1.0, "1g", 2, json!({})), "db": svc(2.0, "2g", 1, json!({})) }));
    let nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("h{i}"), 4.0, "4g", &[]))
        .collect();
    let running = |service: &str, replica, host: &str| Observed {
        service: service.into(),
        replica,
        host: host.into(),
    };
    let observed = vec![
        running("web", 1, "h3"),
        running("web", 2, "h2"),
        running("db", 1, "h2"),
        running("gone", 1, "h1"),
    ];
    let pl = schedule::place(&p, &nodes, &observed).unwrap();
    assert_eq!(hosts_of(&pl, "web"), ["h3", "h2"]);
    assert_eq!(hosts_of(&pl, "db"), ["h2"]);
    // A replica whose host no longer fits it moves.
    let mut small = nodes.clone();
    small[2].allocatable = Amount::from_cpus(0.5, 1 << 30);
    let pl = schedule::place(&p, &small, &observed).unwrap();
    assert_ne!(hosts_of(&pl, "web")[0], "h3");
    assert_eq!(hosts_of(&pl, "web")[1], "h2");
}

#[test]
fn replanning_with_one_service_changed_moves_only_that_service() {
    let services = json!({
        "web": svc(0.5, "512m", 6, json!({"ports": [port(8080)]})),
        "api": svc(1.0, "1g", 4, json!({})),
        "worker": svc(0.25, "2g", 5, json!({})),
        "db": svc(2.0, "4g", 1, json!({"ports": [port(5432)]})),
        "cache": svc(0.5, "1g", 2, json!({})),
    });
    let nodes: Vec<Node> = (1..=8)
        .map(|i| {
            node(
                &format!("h{i}"),
                4.0,
                "8g",
                &[("zone", if i % 2 == 0 { "a" } else { "b" })],
            )
        })
        .collect();
    let before = place(&project(services.clone()), &nodes);
    assert!(before.unschedulable.is_empty());
    let observed: Vec<_> = before
        .replicas()
        .map(|a| Observed {
            service: a.service.to_string(),
            replica: a.replica,
            host: a.host.to_string(),
        })
        .collect();
    let mut changed = services.clone();
    changed["api"] = svc(1.5, "3g", 4, json!({}));
    let api: BTreeSet<String> = ["api".to_string()].into();
    let after = schedule::place_changed(&project(changed), &nodes, &observed, &api).unwrap();
    assert!(after.unschedulable.is_empty());
    for (a, b) in before.replicas().zip(after.replicas()) {
        assert_eq!((a.service, a.replica), (b.service, b.replica));
        if a.service != "api" {
            assert_eq!(a.host, b.host, "{} {} moved", a.service, a.replica);
        }
    }
}

#[test]
fn exhaustive_repair_finds_what_greedy_misses() {
    // Best fit decreasing puts both 0.4s on h1 (0.2 left), then fits only three 0.3s on h2;
    // 0.4+0.3+0.3 on each host places everything, and the repair search finds it.
    let p = project(json!({
        "a": svc(0.4, "64m", 2, json!({})),
        "b": svc(0.3, "64m", 4, json!({})),
    }));
    let nodes = vec![node("h1", 1.0, "1g", &[]), node("h2", 1.0, "1g", &[])];
    let pl = place(&p, &nodes);
    assert!(pl.unschedulable.is_empty(), "{:?}", explanations(&pl));
    assert_eq!(pl.replica_count(), 6);
}

// ---- properties ----

/// cpu quarters, memory in 256 MiB, replicas, published port, constraint, pod to join, max per node.
type GenService = (
    u32,
    u64,
    u32,
    Option<u16>,
    Option<&'static str>,
    Option<usize>,
    Option<u32>,
);

#[derive(Debug, Clone)]
struct Gen {
    services: Vec<GenService>,
    hosts: Vec<(u32, u64, &'static str)>,
}

fn gen_instance(
    max_services: usize,
    max_replicas: u32,
    max_hosts: usize,
) -> impl Strategy<Value = Gen> {
    let service = (
        1u32..=8,                                   // cpu in quarters
        1u64..=8,                                   // memory in 256 MiB
        1u32..=max_replicas,                        // replicas
        prop::option::weighted(0.3, 8000u16..8003), // published port
        prop::option::weighted(
            0.3,
            prop::sample::select(vec![
                "node.labels.zone == a",
                "node.labels.zone != a",
                "node.labels.disk == ssd",
            ]),
        ),
        prop::option::weighted(0.2, 0usize..8), // join the pod of service N (network_mode)
        prop::option::weighted(0.2, 1u32..=2),  // max_replicas_per_node
    );
    let host = (2u32..=8, 2u64..=8, prop::sample::select(vec!["a", "b"]));
    (
        prop::collection::vec(service, 1..=max_services),
        prop::collection::vec(host, 1..=max_hosts),
    )
        .prop_map(|(services, hosts)| Gen { services, hosts })
}

fn build(g: &Gen) -> (Project, Vec<Node>) {
    let mut services = serde_json::Map::new();
    for (i, (cpu, mem, replicas, port_no, constraint, join, max)) in g.services.iter().enumerate() {
        let mut extra = json!({});
        if let Some(p) = port_no {
            extra["ports"] = json!([port(*p)]);
        }
        if let Some(c) = constraint {
            extra["deploy"] = json!({"placement": {"constraints": [c]}});
        }
        if let Some(m) = max {
            merge(
                &mut extra,
                json!({"deploy": {"placement": {"max_replicas_per_node": m}}}),
            );
        }
        if let Some(j) = join {
            if *j < i {
                extra["network_mode"] = json!(format!("service:s{j}"));
            }
        }
        services.insert(
            format!("s{i}"),
            svc(
                *cpu as f64 / 4.0,
                &format!("{}m", mem * 256),
                *replicas,
                extra,
            ),
        );
    }
    let nodes = g
        .hosts
        .iter()
        .enumerate()
        .map(|(i, (cpu, mem, zone))| {
            let mut labels = vec![("zone", *zone)];
            if i % 2 == 0 {
                labels.push(("disk", "ssd"));
            }
            node(
                &format!("h{i}"),
                *cpu as f64 / 2.0,
                &format!("{}m", mem * 512),
                &labels,
            )
        })
        .collect();
    (project(Value::Object(services)), nodes)
}

/// Every rule a placement must obey, checked from scratch.
fn check_rules(p: &Project, nodes: &[Node], pl: &Placement) -> Result<(), String> {
    let demands = plan::demands(p);
    let mut used: BTreeMap<&str, Amount> = BTreeMap::new();
    let mut ports: BTreeMap<&str, Vec<units::PortKey>> = BTreeMap::new();
    let mut per_host: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for a in pl.replicas() {
        let u = used.entry(a.host).or_default();
        *u = u.plus(demands[a.service]);
        let s = &p.services[a.service];
        let node = nodes
            .iter()
            .find(|n| n.name == a.host)
            .ok_or("unknown host")?;
        for c in s.deploy.iter().flat_map(|d| &d.placement.constraints) {
            let c = units::parse_constraint(c).map_err(|e| e.to_string())?;
            let actual = match &c.attribute {
                units::Attribute::Label(k) => node.labels.get(k).cloned(),
                units::Attribute::Hostname => Some(node.name.clone()),
                _ => None,
            };
            if (actual.as_deref() == Some(c.value.as_str())) != c.equal {
                return Err(format!(
                    "{} {} on {} breaks {}",
                    a.service, a.replica, a.host, c.text
                ));
            }
        }
        for k in units::ports(s) {
            let taken = ports.entry(a.host).or_default();
            if taken.iter().any(|t| t.conflicts(&k)) {
                return Err(format!("{k} twice on {}", a.host));
            }
            taken.push(k);
        }
        let n = per_host.entry((a.service, a.host)).or_default();
        *n += 1;
        if let Some(max) = s
            .deploy
            .as_ref()
            .and_then(|d| d.placement.max_replicas_per_node)
        {
            if *n > max {
                return Err(format!("{} has {n} > {max} on {}", a.service, a.host));
            }
        }
    }
    for n in nodes {
        let u = used.get(n.name.as_str()).copied().unwrap_or_default();
        if !u.fits_in(n.allocatable) {
            return Err(format!(
                "{} over capacity: {u:?} > {:?}",
                n.name, n.allocatable
            ));
        }
    }
    // Pods are never split: every service of a pod instance is on the same host.
    let mut pod_host: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    for a in pl.replicas() {
        if let Some(h) = pod_host.insert((a.pod, a.replica), a.host) {
            if h != a.host {
                return Err(format!(
                    "pod {} replica {} split over {h} and {}",
                    a.pod, a.replica, a.host
                ));
            }
        }
    }
    // Every wanted replica is either placed or explained.
    let placed = pl.replica_count();
    let unplaced: usize = pl.unschedulable.iter().map(|u| u.services.len()).sum();
    let wanted: u32 = p.services.values().map(units::replicas).sum();
    if placed + unplaced != wanted as usize {
        return Err(format!(
            "{placed} placed + {unplaced} unplaced != {wanted} wanted"
        ));
    }
    Ok(())
}

/// Whether some placement puts every pod instance on a host (brute force).
fn exists_complete(p: &Project, nodes: &[Node]) -> bool {
    let model = pods::of(p);
    let mut insts = Vec::new();
    for colocation in &model.colocations {
        let members = model.services_of(colocation);
        let count = members
            .iter()
            .map(|m| units::replicas(&p.services[m]))
            .max()
            .unwrap_or(0);
        for r in 1..=count {
            // Borrowed from the project, which outlives the search.
            let running: Vec<&String> = members
                .iter()
                .filter(|m| units::replicas(&p.services[*m]) >= r)
                .filter_map(|m| p.services.get_key_value(m).map(|(k, _)| k))
                .collect();
            insts.push((members[0].clone(), running));
        }
    }
    fn rec(
        p: &Project,
        nodes: &[Node],
        insts: &[(String, Vec<&String>)],
        k: usize,
        pl: &mut Placement,
    ) -> bool {
        if k == insts.len() {
            return check_rules(p, nodes, pl).is_ok();
        }
        for n in nodes {
            let (pod, services) = &insts[k];
            for s in services {
                pl.assignments.push(schedule::Assignment::one(
                    s,
                    k as u32 + 1000,
                    &n.name,
                    &format!("{pod}-{k}"),
                ));
            }
            // Prune early: a partial placement that already breaks a rule cannot be completed.
            let ok = partial_ok(p, nodes, pl) && rec(p, nodes, insts, k + 1, pl);
            for _ in services {
                pl.assignments.pop();
            }
            if ok {
                return true;
            }
        }
        false
    }
    fn partial_ok(p: &Project, nodes: &[Node], pl: &Placement) -> bool {
        match check_rules(p, nodes, pl) {
            Ok(()) => true,
            Err(e) => e.contains("unplaced"),
        }
    }
    rec(p, nodes, &insts, 0, &mut Placement::default())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn placements_obey_every_rule_and_are_deterministic(g in gen_instance(8, 6, 6)) {
        let (p, nodes) = build(&g);
        let pl = place(&p, &nodes);
        if let Err(e) = check_rules(&p, &nodes, &pl) {
            prop_assert!(false, "{e}\n{:#?}", pl.assignments);
        }
        let again = place(&p, &nodes);
        prop_assert_eq!(&pl, &again);
        let demands = plan::demands(&p);
        prop_assert_eq!(plan::render_text(&pl, &demands), plan::render_text(&again, &demands));
    }

    #[test]
    fn unschedulable_only_when_no_placement_exists(g in gen_instance(3, 2, 3)) {
        let (p, nodes) = build(&g);
        let pl = place(&p, &nodes);
        if !pl.unschedulable.is_empty() {
            prop_assert!(!exists_complete(&p, &nodes), "a complete placement exists, yet: {:?}", explanations(&pl));
        }
    }
}

#[test]
fn inventory_to_plan_offline() {
    let fleet = inventory::parse(
        "inventory.yaml",
        "hosts:\n  a: { capacity: { cpus: 2, memory: 2GiB }, reserved: { memory: 512m } }\n  b: { capacity: { cpus: 2, memory: 2GiB }, drain: true }\n",
    )
    .unwrap();
    let nodes = plan::nodes_offline(&fleet).unwrap();
    assert_eq!(nodes[0].allocatable, Amount::from_cpus(2.0, 1536 << 20));
    assert_eq!(nodes[1].state, NodeState::Draining);
    let no_cap = inventory::parse("inventory.yaml", "hosts:\n  a: {}\n  b: {}\n").unwrap();
    match plan::nodes_offline(&no_cap) {
        Err(plan::PlanError::Fleet(msg)) => {
            assert!(
                msg.starts_with("2 hosts declare no capacity: a, b"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut facts = plan::Facts::new();
    facts.insert(
        "a".into(),
        plan::HostFacts {
            cpus: 4.0,
            memory: 8 << 30,
            arch: "arm64".into(),
        },
    );
    let nodes = plan::nodes_with_facts(&no_cap, Some(&facts));
    assert_eq!(nodes[0].allocatable, Amount::from_cpus(4.0, 8 << 30));
    assert_eq!(nodes[0].arch.as_deref(), Some("aarch64"));
    assert_eq!(nodes[1].state, NodeState::Unreachable);
}

// ---- `compose-fleet plan` on real compose files and inventories ----

/// Runs `compose-fleet -f DIR/compose.yaml plan ARGS` from the repository root.
fn plan_cli(dir: &str, args: &[&str]) -> (String, String, i32) {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .current_dir(root)
        .env_remove("COMPOSE_FLEET_INVENTORY")
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("REGISTRY")
        .args(["-f", &format!("{dir}/compose.yaml"), "plan"])
        .args(args)
        .output()
        .expect("run compose-fleet");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn plan_voting_example() {
    let (stdout, stderr, code) = plan_cli("examples/voting", &["--offline"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!(stdout);
}

#[test]
fn plan_shop_example() {
    let (stdout, stderr, code) = plan_cli("examples/shop", &["--offline"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!(stdout);
}

#[test]
fn plan_shop_example_json_contract() {
    let (stdout, stderr, code) = plan_cli("examples/shop", &["--offline", "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["hosts", "placements", "unschedulable"]);
    for p in v["placements"].as_array().expect("placements") {
        let keys: BTreeSet<&String> = p.as_object().expect("placement").keys().collect();
        assert_eq!(
            keys,
            ["host", "pod", "replica", "service"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .iter()
                .collect()
        );
    }
    let h = &v["hosts"][0];
    for k in [
        "name",
        "cpus",
        "memory",
        "cpus_reserved",
        "memory_reserved",
        "ports",
    ] {
        assert!(h.get(k).is_some(), "hosts[0] has no {k}: {h}");
    }
    insta::assert_snapshot!(stdout);
}

#[test]
fn plan_overfull_says_what_is_unschedulable_first_and_exits_1() {
    let (stdout, stderr, code) = plan_cli("tests/fixtures/plan/overfull", &["--offline"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.starts_with("UNSCHEDULABLE"), "{stdout}");
    assert!(
        stderr.contains("3 replicas of the project cannot be placed"),
        "{stderr}"
    );
    insta::assert_snapshot!(stdout);
    let (json_out, _, code) = plan_cli(
        "tests/fixtures/plan/overfull",
        &["--offline", "--format", "json"],
    );
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&json_out).expect("JSON on stdout");
    let unschedulable = v["unschedulable"].as_array().expect("list");
    assert_eq!(unschedulable.len(), 3);
    assert_eq!(unschedulable[0]["service"], "db");
    assert_eq!(unschedulable[0]["replica"], 3);
    let reasons = unschedulable[0]["reasons"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("lack memory"))),
        "{reasons:?}"
    );
}

#[test]
fn plan_without_capacity_needs_offline_declarations_or_the_transport() {
    // Without `--offline`, `plan` asks the hosts over SSH: tested on the lab fleet
    // (`plan_facts`), never against this fixture's addresses, which are not ours.
    let (_, stderr, code) = plan_cli("tests/fixtures/plan/facts", &["--offline"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("1 host declares no capacity: b"),
        "{stderr}"
    );
}

#[test]
fn plan_reports_inventory_errors_with_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("compose.yaml"),
        "services:\n  web: { image: busybox }\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "hosts:\n  a: { capacity: { cpus: 2, memroy: 1g } }\n",
    )
    .expect("write");
    let (_, stderr, code) = plan_cli(dir.path().to_str().expect("utf-8 path"), &["--offline"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("inventory.yaml:2:29"), "{stderr}");
    assert!(stderr.contains("did you mean `memory`?"), "{stderr}");
}

/// Regression (found by the brute-force property): in a pod whose services differ in replicas,
/// an instance obeys only the constraints and `max_replicas_per_node` of the services it runs.
#[test]
fn pod_instances_obey_only_the_rules_of_services_they_run() {
    let p = project(json!({
        "s0": svc(0.25, "256m", 2, json!({})),
        "s1": svc(0.25, "256m", 1, json!({"network_mode": "service:s0",
            "deploy": {"placement": {"max_replicas_per_node": 1, "constraints": ["node.labels.zone == a"]}}})),
    }));
    let pl = place(&p, &[node("h", 1.0, "1g", &[("zone", "a")])]);
    assert!(pl.unschedulable.is_empty(), "{:?}", explanations(&pl));
    assert_eq!(hosts_of(&pl, "s0"), ["h", "h"]);
    let p = project(json!({
        "s0": svc(0.25, "1g", 2, json!({})),
        "s1": svc(0.25, "768m", 1, json!({"network_mode": "service:s0",
            "deploy": {"placement": {"constraints": ["node.labels.zone != a"]}}})),
    }));
    let pl = place(
        &p,
        &[
            node("b", 1.0, "2g", &[("zone", "b")]),
            node("a", 1.0, "1g", &[("zone", "a")]),
        ],
    );
    assert!(pl.unschedulable.is_empty(), "{:?}", explanations(&pl));
    assert_eq!(hosts_of(&pl, "s1"), ["b"]);
    assert_eq!(hosts_of(&pl, "s0"), ["b", "a"]);
}
