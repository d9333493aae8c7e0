//! Placement benchmark: speed on large heterogeneous fleets, and packing quality against a lower
//! bound and against first-fit decreasing. Prints figures; asserts nothing.
//!
//! `cargo bench --bench placement` (release). Instances are generated from fixed seeds.
//! `-- --memory` also measures the peak heap of placing 10^6 identical replicas of one service
//! (a counting allocator wraps the system one; its cost is the same for every figure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use compose_fleet::compose::model::{
    Bytes, Deploy, Placement as PlacementSpec, PlacementPreference, Port, Project, ResourceAmounts,
    Resources, Service,
};
use compose_fleet::schedule::units::Amount;
use compose_fleet::schedule::{self, Node, NodeState};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak heap of placing `replicas` identical replicas of one service on `hosts` hosts, and of
/// the placement kept afterwards.
fn memory(replicas: u32, hosts: usize) {
    let mut project = Project {
        name: "memory".into(),
        ..Project::default()
    };
    project
        .services
        .insert("web".into(), service("web", 0.001, MIB, replicas));
    let nodes: Vec<Node> = (0..hosts)
        .map(|i| node(format!("h{i:05}"), 1e6, 1 << 50, &[], "x86_64"))
        .collect();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let pl = schedule::place(&project, &nodes, &[]).expect("memory project");
    let secs = t.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    println!(
        "memory: {replicas} replicas of one service on {hosts} hosts: peak {:.1} MiB ({:.0} B per replica), \
         the placement kept {:.1} MiB, {:.2} s; {} placed",
        peak as f64 / MIB as f64,
        peak as f64 / f64::from(replicas),
        kept as f64 / MIB as f64,
        secs,
        pl.replica_count(),
    );
}

/// splitmix64: a small seeded generator, so instances are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn service(name: &str, cpus: f64, memory: u64, replicas: u32) -> Service {
    Service {
        name: name.into(),
        image: Some("busybox".into()),
        deploy: Some(Deploy {
            replicas: Some(replicas),
            resources: Resources {
                reservations: Some(ResourceAmounts {
                    cpus: Some(cpus),
                    memory: Some(Bytes(memory)),
                    ..ResourceAmounts::default()
                }),
                limits: None,
                ..Resources::default()
            },
            ..Deploy::default()
        }),
        ..Service::default()
    }
}

fn node(name: String, cpus: f64, memory: u64, labels: &[(&str, String)], arch: &str) -> Node {
    Node {
        name,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        arch: Some(arch.into()),
        allocatable: Amount::from_cpus(cpus, memory),
        state: NodeState::Ready,
    }
}

/// A fleet of `hosts` machines of six kinds over three zones, and a project of about `replicas`
/// replicas filling roughly 70% of it, with constraints, ports, per-node limits and spreading.
fn speed_instance(seed: u64, hosts: usize, replicas: usize) -> (Project, Vec<Node>) {
    let mut rng = Rng(seed);
    let kinds = [
        (4.0, 8),
        (8.0, 16),
        (16.0, 32),
        (8.0, 64),
        (32.0, 128),
        (2.0, 4),
    ];
    let mut nodes = Vec::new();
    for i in 0..hosts {
        let (c, m) = kinds[rng.below(kinds.len() as u64) as usize];
        let zone = ["a", "b", "c"][i % 3].to_string();
        let disk = if rng.below(2) == 0 { "ssd" } else { "hdd" }.to_string();
        let arch = if rng.below(10) == 0 {
            "aarch64"
        } else {
            "x86_64"
        };
        nodes.push(node(
            format!("h{i:05}"),
            c,
            m * GIB,
            &[("zone", zone), ("disk", disk)],
            arch,
        ));
    }
    let cap_cpu: f64 = nodes
        .iter()
        .map(|n| n.allocatable.cpu_millis as f64 / 1000.0)
        .sum();
    let cap_mem: f64 = nodes.iter().map(|n| n.allocatable.memory as f64).sum();
    // Mean demand per replica so that the whole is about 70% of the fleet.
    let mean_cpu = 0.7 * cap_cpu / replicas as f64;
    let mean_mem = 0.7 * cap_mem / replicas as f64;
    let mut project = Project {
        name: "bench".into(),
        ..Project::default()
    };
    let mut left = replicas;
    let mut i = 0;
    let mut port = 20000u16;
    while left > 0 {
        let n = (1 + rng.below(39) as usize).min(left);
        left -= n;
        let name = format!("s{i:05}");
        i += 1;
        let mut s = service(
            &name,
            (mean_cpu * rng.range(0.2, 1.8) * 100.0).round() / 100.0,
            ((mean_mem * rng.range(0.2, 1.8)) as u64 / MIB).max(1) * MIB,
            n as u32,
        );
        let mut placement = PlacementSpec::default();
        match rng.below(20) {
            0 | 1 => placement.constraints.push(format!(
                "node.labels.zone == {}",
                ["a", "b", "c"][rng.below(3) as usize]
            )),
            2 => placement.constraints.push("node.labels.disk == ssd".into()),
            3 => placement
                .constraints
                .push("node.platform.arch != aarch64".into()),
            4 => placement.max_replicas_per_node = Some(2),
            5 => placement.preferences.push(PlacementPreference {
                spread: "node.labels.zone".into(),
            }),
            6 => {
                s.ports.push(Port {
                    mode: "ingress".into(),
                    target: 80,
                    published: Some(port.to_string()),
                    protocol: "tcp".into(),
                    ..Port::default()
                });
                port += 1;
            }
            _ => {}
        }
        s.deploy.as_mut().expect("deploy").placement = placement;
        project.services.insert(name, s);
    }
    (project, nodes)
}

fn time_it(label: &str, seed: u64, hosts: usize, replicas: usize, runs: usize) {
    let (project, nodes) = speed_instance(seed, hosts, replicas);
    let wanted: u32 = project
        .services
        .values()
        .map(schedule::units::replicas)
        .sum();
    let mut times = Vec::new();
    let mut result = None;
    for _ in 0..runs {
        let t = Instant::now();
        let pl = schedule::place(&project, &nodes, &[]).expect("bench project");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        result = Some(pl);
    }
    times.sort_by(f64::total_cmp);
    let pl = result.expect("at least one run");
    let used = pl.hosts.iter().filter(|h| !h.replicas.is_empty()).count();
    println!(
        "speed {label}: {wanted} replicas ({} services) on {hosts} hosts: p50 {:.1} ms, min {:.1} ms, max {:.1} ms over {runs} runs; \
         {:.0} placements/s; {} placed, {} unschedulable, {used} hosts used",
        project.services.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        wanted as f64 / (times[times.len() / 2] / 1000.0),
        pl.replica_count(),
        pl.unschedulable.len(),
    );
}

/// Quality instance: `n` replicas in services of 1–4 replicas; hosts of two sizes, plenty of them.
/// `anti`: cpu-heavy and memory-heavy demands (cpu + memory share ≈ constant); else independent.
fn quality_instance(seed: u64, n: usize, anti: bool) -> (Project, Vec<Node>) {
    let mut rng = Rng(seed);
    let kinds = [(16.0, 64 * GIB), (8.0, 32 * GIB)];
    let mut project = Project {
        name: "quality".into(),
        ..Project::default()
    };
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let r = (1 + rng.below(4) as usize).min(left);
        left -= r;
        // Demands as fractions of the small host (8 cpus, 32 GiB).
        let (c, m) = if anti {
            let x = rng.range(0.02, 0.5);
            (x, (0.52 - x).max(0.02))
        } else {
            (rng.range(0.02, 0.4), rng.range(0.02, 0.4))
        };
        let name = format!("s{i:04}");
        i += 1;
        project.services.insert(
            name.clone(),
            service(
                &name,
                (c * 8.0 * 100.0).round() / 100.0,
                ((m * 32.0 * 1024.0) as u64).max(1) * MIB,
                r as u32,
            ),
        );
    }
    let mut nodes = Vec::new();
    for k in 0..n {
        let (c, m) = kinds[k % 2];
        nodes.push(node(format!("h{k:04}"), c, m, &[], "x86_64"));
    }
    (project, nodes)
}

/// Items (cpu millis, memory) of a project, one per replica.
fn items(project: &Project) -> Vec<Amount> {
    let mut out = Vec::new();
    for s in project.services.values() {
        let d = schedule::units::demand(s);
        for _ in 0..schedule::units::replicas(s) {
            out.push(d);
        }
    }
    out
}

/// Max over dimensions of the smallest number of largest hosts whose capacity covers the demand.
fn lower_bound(items: &[Amount], nodes: &[Node]) -> usize {
    let need_c: u64 = items.iter().map(|a| a.cpu_millis).sum();
    let need_m: u64 = items.iter().map(|a| a.memory).sum();
    let cover = |need: u64, mut caps: Vec<u64>| {
        caps.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum = 0;
        for (k, c) in caps.iter().enumerate() {
            if sum >= need {
                return k;
            }
            sum += c;
        }
        caps.len()
    };
    cover(
        need_c,
        nodes.iter().map(|n| n.allocatable.cpu_millis).collect(),
    )
    .max(cover(
        need_m,
        nodes.iter().map(|n| n.allocatable.memory).collect(),
    ))
}

/// First-fit decreasing: items by decreasing sum of normalized sizes, hosts largest first.
fn ffd(items: &[Amount], nodes: &[Node]) -> usize {
    let max_c = nodes
        .iter()
        .map(|n| n.allocatable.cpu_millis)
        .max()
        .unwrap_or(1) as f64;
    let max_m = nodes
        .iter()
        .map(|n| n.allocatable.memory)
        .max()
        .unwrap_or(1) as f64;
    let size = |a: &Amount| a.cpu_millis as f64 / max_c + a.memory as f64 / max_m;
    let mut order: Vec<&Amount> = items.iter().collect();
    order.sort_by(|a, b| size(b).total_cmp(&size(a)));
    let mut hosts: Vec<Amount> = nodes.iter().map(|n| n.allocatable).collect();
    hosts.sort_by(|a, b| size(b).total_cmp(&size(a)));
    let full = hosts.clone();
    for it in order {
        if let Some(h) = hosts.iter_mut().find(|h| it.fits_in(**h)) {
            *h = h.saturating_sub(*it);
        }
    }
    hosts.iter().zip(&full).filter(|(h, f)| h != f).count()
}

fn quality(anti: bool, base: u64, seeds: u64, n: usize) {
    let kind = if anti {
        "anti-correlated"
    } else {
        "independent"
    };
    let mut ours_sum = 0.0;
    let mut ffd_sum = 0.0;
    let mut ours_max: f64 = 0.0;
    let mut ffd_max: f64 = 0.0;
    let mut worse = 0;
    let mut lines: BTreeMap<u64, String> = BTreeMap::new();
    for seed in 0..seeds {
        let (project, nodes) = quality_instance(base + seed, n, anti);
        let it = items(&project);
        let lb = lower_bound(&it, &nodes);
        let pl = schedule::place(&project, &nodes, &[]).expect("quality project");
        assert!(pl.unschedulable.is_empty(), "quality instances always fit");
        let ours = pl.hosts.iter().filter(|h| !h.replicas.is_empty()).count();
        let f = ffd(&it, &nodes);
        let (ro, rf) = (ours as f64 / lb as f64, f as f64 / lb as f64);
        ours_sum += ro;
        ffd_sum += rf;
        ours_max = ours_max.max(ro);
        ffd_max = ffd_max.max(rf);
        if ours > f {
            worse += 1;
        }
        lines.insert(seed, format!("{ours}/{f}/{lb}"));
    }
    println!(
        "quality {kind}: {seeds} instances of {n} replicas: hosts used / lower bound: ours mean {:.3} max {:.3}; \
         FFD mean {:.3} max {:.3}; ours worse than FFD on {worse} of {seeds}",
        ours_sum / seeds as f64,
        ours_max,
        ffd_sum / seeds as f64,
        ffd_max,
    );
    println!(
        "  per seed (ours/FFD/bound): {}",
        lines.values().cloned().collect::<Vec<_>>().join(" ")
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("placement benchmark (single thread)");
    if std::env::args().any(|a| a == "--memory") {
        memory(1_000_000, 100);
        memory(100_000, 100);
    }
    time_it("10k/1k", 42, 1_000, 10_000, if quick { 3 } else { 21 });
    if !quick {
        time_it("100k/10k", 43, 10_000, 100_000, 5);
    }
    // `--seeds N`: a second set of instances (seeds N.., default 1000..), to check that a change
    // helps in general rather than on the seeds it was measured with.
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .iter()
        .position(|a| a == "--seeds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    println!("quality seeds {base}..{}", base + 20);
    quality(false, base, 20, 1_000);
    quality(true, base, 20, 1_000);
}
