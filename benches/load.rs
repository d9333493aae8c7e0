//! The front-end benchmark: load + interpolate + validate + graph for generated projects of 100,
//! 1,000 and 10,000 services (`compose_fleet::testgen`), on one thread, and docker compose v2's
//! `config` (the reference in `.reference/`, v2.40.3) on the same files in the same run.
//!
//! ```text
//! cargo bench --bench load                       # all sizes, docker-compose included
//! cargo bench --bench load -- --sizes 100,1000   # chosen sizes
//! cargo bench --bench load -- --no-docker-compose
//! ```
//!
//! Prints figures, asserts nothing about time (targets from issue 2: 1,000 services ≤ 25 ms,
//! 10,000 ≤ 200 ms, linear growth). Files are read from a temporary directory through the real
//! file system, as the CLI does. docker-compose is slow (minutes at 10,000 services), so it runs
//! fewer times per size.
//!
//! Each figure is given twice: wall time, and CPU time (this thread's for compose-fleet, the
//! child's user + system for docker-compose). On a shared machine wall time includes waiting for
//! a core; CPU time is what the work costs. Pin to one core with `taskset -c N` for wall figures.
//!
//! The compose-fleet line also gives the CPU minimum over the runs (the steadiest figure on a
//! busy machine) and the phases: load, graph, and the YAML parse alone (the load's first stage,
//! timed again on the text in memory, up to and including dropping its tree; the drop is also
//! given alone, as freeing a tree larger than the caches is a good part of it at 10,000).
//!
//! Two variants of each project are loaded: the realistic one (defaults shared through anchors
//! and `<<` merge keys) and the same project with the defaults written out in every service.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compose_fleet::compose::{self, Environment, LoadOptions, RealFs};
use compose_fleet::graph;
use compose_fleet::testgen;

const SEED: u64 = 42;
/// docker compose v2.40.3, the reference `scripts/setup.sh` installs (the differential test's).
const DOCKER_COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.reference/bin/docker-compose");

struct Options {
    sizes: Vec<usize>,
    docker_compose: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        sizes: vec![100, 1_000, 10_000],
        docker_compose: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // cargo bench passes `--bench`; nothing to do.
            "--bench" => {}
            "--no-docker-compose" => o.docker_compose = false,
            "--sizes" => {
                let list = args.next().ok_or("--sizes needs a list, e.g. 100,1000")?;
                o.sizes = list
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--sizes: {s}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

/// How the generated file shares its defaults.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Anchors and `<<` merge keys, as real files do.
    MergeKeys,
    /// The same project with every default written out (no aliases).
    Inlined,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::MergeKeys => "anchors + merge keys",
            Variant::Inlined => "defaults inlined, no aliases",
        }
    }
}

/// Repeated measurements of one quantity.
#[derive(Default)]
struct Figures {
    times: Vec<Duration>,
}

impl Figures {
    fn percentile(&self, p: f64) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        if t.is_empty() {
            return Duration::ZERO;
        }
        let i = ((t.len() - 1) as f64 * p).round() as usize;
        t[i.min(t.len() - 1)]
    }
    fn min(&self) -> Duration {
        self.percentile(0.0)
    }
    fn p50(&self) -> Duration {
        self.percentile(0.5)
    }
    fn p90(&self) -> Duration {
        self.percentile(0.9)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// User + system CPU time of all waited-for children of this process.
fn children_cpu() -> Duration {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the valid, exclusively borrowed `ru`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A point in time on both clocks.
#[derive(Clone, Copy)]
struct Stamp {
    wall: Instant,
    cpu: Duration,
}

impl Stamp {
    fn now() -> Self {
        Stamp {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }
    fn since(self, earlier: Stamp) -> (Duration, Duration) {
        (
            self.wall - earlier.wall,
            self.cpu.saturating_sub(earlier.cpu),
        )
    }
}

struct Pass {
    wall: Duration,
    cpu: Duration,
    parse_cpu: Duration,
    /// Of `parse_cpu`, dropping the tree (freeing every node's block).
    parse_drop_cpu: Duration,
    load_cpu: Duration,
    graph_cpu: Duration,
    graph_alone_cpu: Duration,
    edges: usize,
}

/// One full front-end pass, as `compose-fleet graph` does it.
fn pass(file: &Path, env: &Environment) -> Result<Pass, String> {
    let start = Stamp::now();
    let loaded = compose::load(&LoadOptions::for_file(file), env, &RealFs).map_err(|f| {
        let first: Vec<String> = f
            .diagnostics
            .errors()
            .take(3)
            .map(|d| d.to_string())
            .collect();
        format!("the generated project does not load: {}", first.join("; "))
    })?;
    let loaded_at = Stamp::now();
    let graph = graph::build(&loaded.project).map_err(|d| {
        let first: Vec<String> = d.errors().take(3).map(|d| d.to_string()).collect();
        format!(
            "the generated project's graph is invalid: {}",
            first.join("; ")
        )
    })?;
    let done = Stamp::now();
    // The graph alone, again: the first build also pays for the allocator tidying up what the
    // loader freed (glibc's malloc_consolidate), which this one does not.
    let again = Stamp::now();
    black_box(graph::build(black_box(&loaded.project)).is_ok());
    let graph_alone_cpu = Stamp::now().since(again).1;
    let edges = graph.edges().len();
    black_box(&graph);
    black_box(&loaded);
    let (wall, cpu) = done.since(start);
    // The YAML parse alone (text already in memory), the first stage of the load above.
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let name: std::sync::Arc<str> = std::sync::Arc::from("compose.yaml");
    let parse_start = Stamp::now();
    let tree = black_box(compose::yaml::parse(&name, black_box(&text)));
    let parsed = Stamp::now();
    drop(tree);
    let parse_cpu = Stamp::now().since(parse_start).1;
    let parse_drop_cpu = parse_cpu.saturating_sub(parsed.since(parse_start).1);
    Ok(Pass {
        wall,
        cpu,
        parse_cpu,
        parse_drop_cpu,
        load_cpu: loaded_at.since(start).1,
        graph_cpu: done.since(loaded_at).1,
        graph_alone_cpu,
        edges,
    })
}

struct Row {
    variant: Variant,
    services: usize,
    edges: usize,
    bytes: usize,
    wall: Figures,
    cpu: Figures,
    parse_cpu: Figures,
    parse_drop_cpu: Figures,
    load_cpu: Figures,
    graph_cpu: Figures,
    graph_alone_cpu: Figures,
    docker_compose: Option<Result<(Figures, Figures), String>>,
}

fn runs_for(services: usize) -> usize {
    match services {
        0..=200 => 100,
        201..=2_000 => 30,
        _ => 7,
    }
}

fn docker_compose_runs_for(services: usize) -> usize {
    match services {
        0..=200 => 5,
        201..=2_000 => 3,
        _ => 1,
    }
}

/// Times `docker-compose config`; returns (wall, cpu) figures.
fn time_docker_compose(dir: &Path, file: &Path, runs: usize) -> Result<(Figures, Figures), String> {
    let (mut wall, mut cpu) = (Figures::default(), Figures::default());
    for _ in 0..runs {
        let cpu_before = children_cpu();
        let start = Instant::now();
        let out = Command::new(DOCKER_COMPOSE)
            .arg("--project-directory")
            .arg(dir)
            .args(["-p", "bench", "-f"])
            .arg(file)
            .arg("config")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {DOCKER_COMPOSE}: {e}"))?;
        wall.times.push(start.elapsed());
        cpu.times.push(children_cpu().saturating_sub(cpu_before));
        if !out.status.success() {
            return Err(format!(
                "docker-compose config failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    Ok((wall, cpu))
}

fn measure(
    size: usize,
    variant: Variant,
    root: &Path,
    with_docker_compose: bool,
) -> Result<Row, String> {
    let generated = testgen::generate_with(size, SEED, variant == Variant::MergeKeys);
    let dir: PathBuf = root.join(format!(
        "n{size}-{}",
        if variant == Variant::MergeKeys {
            "merge"
        } else {
            "inline"
        }
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("compose.yaml");
    std::fs::write(&file, &generated.compose).map_err(|e| format!("{}: {e}", file.display()))?;
    std::fs::write(dir.join(".env"), &generated.env)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // No variable from the caller's environment changes what is measured.
    let env = Environment::new();

    // Warm up (page cache, allocator), and check the project is valid before timing it.
    let edges = pass(&file, &env)?.edges;
    let mut row = Row {
        variant,
        services: size,
        edges,
        bytes: generated.compose.len(),
        wall: Figures::default(),
        cpu: Figures::default(),
        parse_cpu: Figures::default(),
        parse_drop_cpu: Figures::default(),
        load_cpu: Figures::default(),
        graph_cpu: Figures::default(),
        graph_alone_cpu: Figures::default(),
        docker_compose: None,
    };
    for _ in 0..runs_for(size) {
        let p = pass(&file, &env)?;
        row.wall.times.push(p.wall);
        row.cpu.times.push(p.cpu);
        row.parse_cpu.times.push(p.parse_cpu);
        row.parse_drop_cpu.times.push(p.parse_drop_cpu);
        row.load_cpu.times.push(p.load_cpu);
        row.graph_cpu.times.push(p.graph_cpu);
        row.graph_alone_cpu.times.push(p.graph_alone_cpu);
    }
    if with_docker_compose {
        row.docker_compose = Some(time_docker_compose(
            &dir,
            &file,
            docker_compose_runs_for(size),
        ));
    }
    Ok(row)
}

fn main() {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let docker_compose = opts.docker_compose && Path::new(DOCKER_COMPOSE).exists();
    if opts.docker_compose && !docker_compose {
        println!("note: {DOCKER_COMPOSE} not found (scripts/setup.sh installs it): docker-compose not timed");
    }
    let root = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "front end: load + interpolate + validate + graph, one thread, seed {SEED}; p50/p90 over repeated runs"
    );
    let mut rows: Vec<Row> = Vec::new();
    for &size in &opts.sizes {
        // docker-compose is timed once per size, on the realistic file (or, if compose-fleet
        // rejects that one, on the inlined one).
        let mut docker_compose_pending = docker_compose;
        for variant in [Variant::MergeKeys, Variant::Inlined] {
            match measure(size, variant, root.path(), docker_compose_pending) {
                Ok(row) => {
                    docker_compose_pending = false;
                    print_row(&row);
                    rows.push(row);
                }
                Err(e) => {
                    println!();
                    println!("{size} services, {}: NOT MEASURED: {e}", variant.label());
                }
            }
        }
    }
    println!();
    for variant in [Variant::MergeKeys, Variant::Inlined] {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.variant == variant).collect();
        for w in rows.windows(2) {
            let (a, b) = (w[0], w[1]);
            let size_ratio = b.services as f64 / a.services as f64;
            println!(
                "growth ({}) {} → {} services (×{size_ratio:.0}): cpu p50 ×{:.1}, wall p50 ×{:.1} (linear would be ×{size_ratio:.0})",
                variant.label(),
                a.services,
                b.services,
                ratio(b.cpu.p50(), a.cpu.p50()),
                ratio(b.wall.p50(), a.wall.p50()),
            );
        }
        for (size, target_ms) in [(1_000usize, 25.0), (10_000, 200.0)] {
            if let Some(r) = rows.iter().find(|r| r.services == size) {
                let cpu = r.cpu.p50().as_secs_f64() * 1e3;
                let wall = r.wall.p50().as_secs_f64() * 1e3;
                println!(
                    "target ({}) {size} services ≤ {target_ms} ms: cpu p50 {cpu:.2} ms, wall p50 {wall:.2} ms — {}",
                    variant.label(),
                    if cpu <= target_ms { "met (cpu)" } else { "MISSED" }
                );
            }
        }
    }
}

fn print_row(r: &Row) {
    println!();
    println!(
        "{} services ({}), {} dependency edges, {:.1} KiB of YAML, {} runs",
        r.services,
        r.variant.label(),
        r.edges,
        r.bytes as f64 / 1024.0,
        r.wall.times.len()
    );
    println!(
        "  compose-fleet          cpu min {}  p50 {}  p90 {}   wall p50 {}  p90 {}   (cpu p50: load {} [YAML parse alone {}, of which dropping the tree {}], graph {} [graph alone {}]; {:.1} µs/service)",
        ms(r.cpu.min()),
        ms(r.cpu.p50()),
        ms(r.cpu.p90()),
        ms(r.wall.p50()),
        ms(r.wall.p90()),
        ms(r.load_cpu.p50()),
        ms(r.parse_cpu.p50()),
        ms(r.parse_drop_cpu.p50()),
        ms(r.graph_cpu.p50()),
        ms(r.graph_alone_cpu.p50()),
        r.cpu.p50().as_secs_f64() * 1e6 / r.services as f64
    );
    match &r.docker_compose {
        None => {}
        Some(Err(e)) => println!("  docker-compose config: not timed: {e}"),
        Some(Ok((wall, cpu))) => println!(
            "  docker-compose config  cpu p50 {}  p90 {}   wall p50 {}  p90 {} ({} run{})   docker-compose / compose-fleet: cpu ×{:.0}, wall ×{:.0}",
            ms(cpu.p50()),
            ms(cpu.p90()),
            ms(wall.p50()),
            ms(wall.p90()),
            wall.times.len(),
            if wall.times.len() == 1 { "" } else { "s" },
            ratio(cpu.p50(), r.cpu.p50()),
            ratio(wall.p50(), r.wall.p50()),
        ),
    }
}
