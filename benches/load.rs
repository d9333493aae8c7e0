//! The front-end benchmark: load + interpolate + validate + graph for generated projects of 100,
//! 1,000 and 10,000 services (`compose_fleet::testgen`), on one thread, and Debian's
//! `docker-compose config` (1.29) on the same files in the same run.
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

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use compose_fleet::compose::{self, Environment, LoadOptions, RealFs};
use compose_fleet::graph;
use compose_fleet::testgen;

const SEED: u64 = 42;
const DOCKER_COMPOSE: &str = "/usr/bin/docker-compose";

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

/// Times of one stage over repeated runs.
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

struct Row {
    services: usize,
    edges: usize,
    bytes: usize,
    total: Figures,
    load: Figures,
    graph: Figures,
    docker_compose: Option<Result<Figures, String>>,
}

fn runs_for(services: usize) -> usize {
    match services {
        0..=200 => 200,
        201..=2_000 => 40,
        _ => 11,
    }
}

fn docker_compose_runs_for(services: usize) -> usize {
    match services {
        0..=200 => 5,
        201..=2_000 => 3,
        _ => 1,
    }
}

/// One full front-end pass; returns (load time, graph time, edges).
fn pass(file: &Path, env: &Environment) -> Result<(Duration, Duration, usize), String> {
    let start = Instant::now();
    let loaded = compose::load(&LoadOptions::for_file(file), env, &RealFs).map_err(|f| {
        let first: Vec<String> = f
            .diagnostics
            .errors()
            .take(3)
            .map(|d| d.to_string())
            .collect();
        format!("the generated project does not load: {}", first.join("; "))
    })?;
    let loaded_at = Instant::now();
    let graph = graph::build(&loaded.project).map_err(|d| {
        let first: Vec<String> = d.errors().take(3).map(|d| d.to_string()).collect();
        format!(
            "the generated project's graph is invalid: {}",
            first.join("; ")
        )
    })?;
    let done = Instant::now();
    let edges = graph.edges().len();
    black_box(&graph);
    black_box(&loaded);
    Ok((loaded_at - start, done - loaded_at, edges))
}

fn time_docker_compose(dir: &Path, file: &Path, runs: usize) -> Result<Figures, String> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
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
        let elapsed = start.elapsed();
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
        times.push(elapsed);
    }
    Ok(Figures { times })
}

fn measure(size: usize, root: &Path, with_docker_compose: bool) -> Result<Row, String> {
    let generated = testgen::generate(size, SEED);
    let dir: PathBuf = root.join(format!("n{size}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("compose.yaml");
    std::fs::write(&file, &generated.compose).map_err(|e| format!("{}: {e}", file.display()))?;
    std::fs::write(dir.join(".env"), &generated.env)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    // No variable from the caller's environment changes what is measured.
    let env = Environment::new();

    // Warm up (page cache, allocator), and check the project is valid before timing it.
    let (_, _, edges) = pass(&file, &env)?;
    let runs = runs_for(size);
    let (mut total, mut load, mut graph) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (l, g, _) = pass(&file, &env)?;
        total.push(l + g);
        load.push(l);
        graph.push(g);
    }
    let docker_compose = with_docker_compose
        .then(|| time_docker_compose(&dir, &file, docker_compose_runs_for(size)));
    Ok(Row {
        services: size,
        edges,
        bytes: generated.compose.len(),
        total: Figures { times: total },
        load: Figures { times: load },
        graph: Figures { times: graph },
        docker_compose,
    })
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
        match measure(size, root.path(), docker_compose) {
            Ok(row) => {
                print_row(&row);
                rows.push(row);
            }
            Err(e) => {
                eprintln!("error: {size} services: {e}");
                std::process::exit(1);
            }
        }
    }
    println!();
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let size_ratio = b.services as f64 / a.services as f64;
        let time_ratio = b.total.p50().as_secs_f64() / a.total.p50().as_secs_f64();
        println!(
            "growth {} → {} services (×{size_ratio:.0}): p50 ×{time_ratio:.1} (linear would be ×{size_ratio:.0})",
            a.services, b.services
        );
    }
    for (size, target_ms) in [(1_000usize, 25.0), (10_000, 200.0)] {
        if let Some(r) = rows.iter().find(|r| r.services == size) {
            let p50 = r.total.p50().as_secs_f64() * 1e3;
            println!(
                "target {size} services ≤ {target_ms} ms: p50 {p50:.2} ms — {}",
                if p50 <= target_ms { "met" } else { "MISSED" }
            );
        }
    }
}

fn print_row(r: &Row) {
    println!();
    println!(
        "{} services, {} dependency edges, {:.1} KiB of YAML, {} runs",
        r.services,
        r.edges,
        r.bytes as f64 / 1024.0,
        r.total.times.len()
    );
    println!(
        "  compose-fleet  total p50 {}  p90 {}   (load p50 {}, graph p50 {})  {:.2} µs/service",
        ms(r.total.p50()),
        ms(r.total.p90()),
        ms(r.load.p50()),
        ms(r.graph.p50()),
        r.total.p50().as_secs_f64() * 1e6 / r.services as f64
    );
    match &r.docker_compose {
        None => {}
        Some(Err(e)) => println!("  docker-compose config: not timed: {e}"),
        Some(Ok(dc)) => println!(
            "  docker-compose config  p50 {}  p90 {} ({} run{})   ratio docker-compose / compose-fleet: ×{:.0}",
            ms(dc.p50()),
            ms(dc.p90()),
            dc.times.len(),
            if dc.times.len() == 1 { "" } else { "s" },
            dc.p50().as_secs_f64() / r.total.p50().as_secs_f64()
        ),
    }
}
