//! `cargo bench --bench deploy`: the deploy flow's wall time on simulated hosts, for a few
//! dependency graphs with known pull, start, health and job times, against the critical-path
//! lower bound and against starting the same services level by level (waves); then the flow's
//! own cost on large deploys (real time to drive every event through the state machine). Pure
//! simulation: no hosts, no root. Prints figures, asserts nothing about time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use compose_fleet::compose::model::Condition;
use compose_fleet::deploy::desired::{self, Desired, PodInput};
use compose_fleet::deploy::diff;
use compose_fleet::deploy::flow::{Dependency, Flow, Options};
use compose_fleet::deploy::sim::{self, Script};
use compose_fleet::proto::{ContainerSpec, Healthcheck, PodSpec};

/// A service of a benchmark graph.
struct Svc {
    name: String,
    image: String,
    replicas: u32,
    healthcheck: bool,
}

struct Graph {
    name: &'static str,
    services: Vec<Svc>,
    /// (from, to, condition)
    deps: Vec<(String, String, Condition)>,
    script: Script,
    hosts: usize,
}

fn svc(name: &str, image: &str, replicas: u32, healthcheck: bool) -> Svc {
    Svc {
        name: name.into(),
        image: image.into(),
        replicas,
        healthcheck,
    }
}

fn ms(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

use Condition::{
    ServiceCompletedSuccessfully as Completed, ServiceHealthy as Healthy, ServiceStarted as Started,
};

fn dep(from: &str, to: &str, c: Condition) -> (String, String, Condition) {
    (from.into(), to.into(), c)
}

fn build(g: &Graph) -> (Desired, Vec<Dependency>, Vec<String>) {
    let mut inputs = Vec::new();
    let mut n = 0usize;
    for s in &g.services {
        for r in 1..=s.replicas {
            let name = format!("{}-{r}", s.name);
            inputs.push(PodInput {
                host: format!("h{}", n % g.hosts),
                spec: PodSpec {
                    hostname: name.clone(),
                    name,
                    spec_hash: String::new(),
                    containers: vec![ContainerSpec {
                        service: s.name.clone(),
                        replica: r,
                        image: s.image.clone(),
                        healthcheck: s.healthcheck.then(|| Healthcheck {
                            test: vec!["CMD".into(), "true".into()],
                            interval_ms: 1000,
                            timeout_ms: 1000,
                            retries: 3,
                            start_period_ms: 0,
                            start_interval_ms: 0,
                        }),
                        ..ContainerSpec::default()
                    }],
                    ports: Vec::new(),
                    network: Default::default(),
                },
                networks: Vec::new(),
            });
            n += 1;
        }
    }
    let names: BTreeSet<String> = g.services.iter().map(|s| s.name.clone()).collect();
    let desired = desired::build(inputs, &BTreeMap::new(), names.clone(), names).expect("desired");
    let deps: Vec<Dependency> = g
        .deps
        .iter()
        .map(|(from, to, c)| Dependency {
            from: from.clone(),
            to: to.clone(),
            condition: *c,
            required: true,
            restart: false,
        })
        .collect();
    // The graphs below list services dependencies first.
    let order = g.services.iter().map(|s| s.name.clone()).collect();
    (desired, deps, order)
}

/// web + API (2 replicas) + database + cache + migration job: the example app.
fn app() -> Graph {
    Graph {
        name: "web+api+db+cache+migrate",
        services: vec![
            svc("db", "postgres", 1, true),
            svc("cache", "redis", 1, false),
            svc("migrate", "app", 1, false),
            svc("api", "app", 2, false),
            svc("web", "nginx", 1, false),
        ],
        deps: vec![
            dep("migrate", "db", Healthy),
            dep("api", "db", Healthy),
            dep("api", "migrate", Completed),
            dep("api", "cache", Started),
            dep("web", "api", Started),
        ],
        script: Script {
            pull: ms(&[
                ("postgres", 800),
                ("redis", 300),
                ("app", 2500),
                ("nginx", 400),
            ]),
            start: ms(&[
                ("db", 200),
                ("cache", 100),
                ("migrate", 150),
                ("api", 300),
                ("web", 100),
            ]),
            health: ms(&[("db", 3000)]),
            exit: [("migrate".to_string(), (1200, 0))].into(),
            ..Script::default()
        },
        hosts: 3,
    }
}

/// Ten services in a line, each waiting for the previous one to be healthy.
fn chain() -> Graph {
    let services: Vec<Svc> = (0..10)
        .map(|i| svc(&format!("c{i}"), &format!("img{i}"), 1, true))
        .collect();
    let deps = (1..10)
        .map(|i| dep(&format!("c{i}"), &format!("c{}", i - 1), Healthy))
        .collect();
    let mut pull = BTreeMap::new();
    let mut health = BTreeMap::new();
    let mut start = BTreeMap::new();
    for i in 0..10 {
        pull.insert(format!("img{i}"), 1500);
        start.insert(format!("c{i}"), 200);
        health.insert(format!("c{i}"), 1000);
    }
    Graph {
        name: "chain of 10, healthy",
        services,
        deps,
        script: Script {
            pull,
            start,
            health,
            ..Script::default()
        },
        hosts: 3,
    }
}

/// Two branches of unequal length under one root, and a service waiting only on the short one:
/// waves make it wait for the slow branch's level.
fn uneven() -> Graph {
    Graph {
        name: "uneven branches",
        services: vec![
            svc("root", "base", 1, true),
            svc("slow", "slow", 1, true),
            svc("fast", "fast", 1, false),
            svc("after-fast", "web", 3, false),
            svc("after-slow", "web", 1, false),
        ],
        deps: vec![
            dep("slow", "root", Healthy),
            dep("fast", "root", Started),
            dep("after-fast", "fast", Started),
            dep("after-slow", "slow", Healthy),
        ],
        script: Script {
            pull: ms(&[("base", 500), ("slow", 4000), ("fast", 200), ("web", 600)]),
            start: ms(&[
                ("root", 100),
                ("slow", 300),
                ("fast", 50),
                ("after-fast", 80),
                ("after-slow", 80),
            ]),
            health: ms(&[("root", 500), ("slow", 6000)]),
            ..Script::default()
        },
        hosts: 4,
    }
}

/// A database every service waits for, 20 services that need it healthy, and a gateway waiting for
/// all of them to start.
fn fan() -> Graph {
    let mut services = vec![svc("db", "postgres", 1, true)];
    let mut deps = Vec::new();
    let mut pull = ms(&[("postgres", 800), ("gw", 300)]);
    let mut start = ms(&[("db", 200), ("gw", 100)]);
    for i in 0..20 {
        let name = format!("svc{i:02}");
        services.push(svc(&name, &format!("img{i}"), 2, false));
        deps.push(dep(&name, "db", Healthy));
        pull.insert(format!("img{i}"), 500 + 150 * i);
        start.insert(name, 100 + 40 * i);
    }
    services.push(svc("gw", "gw", 2, false));
    for i in 0..20 {
        deps.push(dep("gw", &format!("svc{i:02}"), Started));
    }
    Graph {
        name: "fan of 20 behind a db",
        services,
        deps,
        script: Script {
            pull,
            start,
            health: ms(&[("db", 2500)]),
            ..Script::default()
        },
        hosts: 10,
    }
}

/// A deterministic pseudo-random DAG: `n` services with `replicas` each on `hosts` hosts.
fn random(n: usize, replicas: u32, hosts: usize) -> Graph {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % m
    };
    let mut services = Vec::new();
    let mut deps = Vec::new();
    let mut script = Script::default();
    for i in 0..n {
        let name = format!("r{i:04}");
        let healthcheck = next(3) == 0;
        services.push(svc(&name, &format!("img{}", i % 50), replicas, healthcheck));
        script.start.insert(name.clone(), 50 + next(500));
        if healthcheck {
            script.health.insert(name.clone(), 200 + next(3000));
        }
        for _ in 0..next(3) {
            if i == 0 {
                break;
            }
            let to = next(i as u64) as usize;
            let to_name = format!("r{to:04}");
            let c = if services[to].healthcheck {
                Healthy
            } else {
                Started
            };
            if !deps.iter().any(|(f, t, _)| *f == name && *t == to_name) {
                deps.push(dep(&name, &to_name, c));
            }
        }
    }
    for i in 0..50 {
        script.pull.insert(format!("img{i}"), 300 + next(3000));
    }
    Graph {
        name: "random",
        services,
        deps,
        script,
        hosts,
    }
}

fn main() {
    println!(
        "simulated wall time (ms): the flow against the critical path and level-by-level waves"
    );
    println!(
        "{:<28} {:>5} {:>5} {:>9} {:>9} {:>6} {:>9} {:>6}",
        "graph", "svcs", "pods", "critical", "flow", "ratio", "waves", "w/flow"
    );
    let mut graphs = vec![app(), chain(), uneven(), fan(), random(60, 2, 8)];
    graphs[4].name = "random 60 services x2";
    for g in &graphs {
        let (desired, deps, order) = build(g);
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        let d = diff::diff(&desired, &diff::Observed::new(), false);
        let mut flow = Flow::new(&desired, &d, &deps, Options::default()).expect("flow");
        let run = sim::run(&mut flow, &desired, &g.script);
        let ok = run.summary.as_ref().is_some_and(|s| s.ok());
        let critical = sim::critical_path(&order, &desired, &deps, &g.script);
        let waves = sim::waves(&order, &desired, &deps, &g.script);
        println!(
            "{:<28} {:>5} {:>5} {:>9} {:>9} {:>6.3} {:>9} {:>6.2}{}",
            g.name,
            g.services.len(),
            desired.pods().count(),
            critical,
            run.wall,
            run.wall as f64 / critical.max(1) as f64,
            waves,
            waves as f64 / run.wall.max(1) as f64,
            if ok { "" } else { "  (FAILED)" }
        );
    }

    println!();
    println!("the flow's own cost: real time to build it and feed every event of a whole deploy");
    println!(
        "{:<28} {:>7} {:>6} {:>8} {:>10} {:>10} {:>12}",
        "deploy", "pods", "hosts", "events", "new_ms", "run_ms", "events/s"
    );
    for (n, replicas, hosts) in [(100, 10, 50), (200, 50, 100), (1000, 10, 1000)] {
        let g = random(n, replicas, hosts);
        let (desired, deps, _) = build(&g);
        let d = diff::diff(&desired, &diff::Observed::new(), false);
        let t0 = Instant::now();
        let mut flow = Flow::new(&desired, &d, &deps, Options::default()).expect("flow");
        let new_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let run = sim::run(&mut flow, &desired, &g.script);
        let run_s = t1.elapsed().as_secs_f64();
        println!(
            "{:<28} {:>7} {:>6} {:>8} {:>10.1} {:>10.1} {:>12.0}",
            format!("random {n} services x{replicas}"),
            desired.pods().count(),
            hosts,
            run.events.len(),
            new_ms,
            run_s * 1e3,
            run.events.len() as f64 / run_s.max(1e-9)
        );
    }
}
