//! A deterministic generator of realistic compose projects of any size, for the loader benchmark
//! (`benches/load.rs`), the proptest over the loader and the fuzz corpus. Not part of the API.
//!
//! A generated project uses what real files use: `x-` blocks with anchors and merge keys (`<<`),
//! images and environment values with interpolation (`${VAR:-default}`, `${VAR}`, `$$`), short and
//! long port syntax, a `depends_on` DAG (short and long syntax, every condition), healthchecks,
//! `deploy.resources`, named volumes, networks, and a few services behind a profile. Each service
//! depends only on services generated before it, so the graph is acyclic. The same `(services,
//! seed)` always gives the same bytes. The text is also accepted by docker-compose 1.29, so both
//! tools can be timed on the same files.

use std::fmt::Write as _;

/// A generated project: the compose file and the `.env` that goes beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub compose: String,
    pub env: String,
    /// Number of services (enabled and behind profiles).
    pub services: usize,
    /// Number of `depends_on` edges written.
    pub dependencies: usize,
}

/// SplitMix64: a tiny, well-known, seedable generator; enough for shaping test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Role {
    name: &'static str,
    image: &'static str,
    port: u16,
    health: &'static str,
}

const ROLES: &[Role] = &[
    Role {
        name: "api",
        image: "${REGISTRY:-registry.local:5000}/shop/api:${TAG:-1.4.2}",
        port: 8080,
        health: r#"["CMD", "wget", "-qO-", "http://localhost:8080/healthz"]"#,
    },
    Role {
        name: "web",
        image: "nginx:1.27-alpine",
        port: 80,
        health: r#"["CMD-SHELL", "wget -qO- http://localhost/ || exit 1"]"#,
    },
    Role {
        name: "worker",
        image: "${REGISTRY:-registry.local:5000}/shop/worker:${TAG:-1.4.2}",
        port: 9000,
        health: r#"["CMD", "/app/worker", "--check"]"#,
    },
    Role {
        name: "db",
        image: "postgres:16-alpine",
        port: 5432,
        health: r#"["CMD-SHELL", "pg_isready -U $${POSTGRES_USER:-app}"]"#,
    },
    Role {
        name: "cache",
        image: "redis:7.2-alpine",
        port: 6379,
        health: r#"["CMD", "redis-cli", "ping"]"#,
    },
    Role {
        name: "queue",
        image: "rabbitmq:3.13-management",
        port: 5672,
        health: r#"["CMD", "rabbitmq-diagnostics", "-q", "ping"]"#,
    },
];

const CONDITIONS: &[&str] = &[
    "service_started",
    "service_healthy",
    "service_healthy",
    "service_completed_successfully",
];

/// The name of the `i`-th generated service.
pub fn service_name(i: usize) -> String {
    format!("{}-{i:05}", ROLES[i % ROLES.len()].name)
}

/// Generates a project of `services` services from `seed`, sharing defaults through anchors and
/// merge keys as real files do.
pub fn generate(services: usize, seed: u64) -> Generated {
    generate_with(services, seed, true)
}

/// As [`generate`]; with `merge_keys: false` every service spells out the defaults instead of
/// merging them from anchors (same project once loaded, no aliases in the text).
pub fn generate_with(services: usize, seed: u64, merge_keys: bool) -> Generated {
    let mut rng = Rng(seed);
    // The same defaults, merged from an anchor or written out in place.
    let merge = |out: &mut String, anchor: &str, indent: &str| {
        if merge_keys {
            let _ = writeln!(out, "{indent}<<: *{anchor}");
        } else {
            let block = HEADER
                .split("\nx-")
                .find_map(|b| b.strip_prefix(&format!("{anchor}: &{anchor}\n")))
                .unwrap_or("");
            for line in block.lines() {
                let _ = writeln!(out, "{indent}{}", line.strip_prefix("  ").unwrap_or(line));
            }
        }
    };
    let mut out = String::with_capacity(services * 900 + 1024);
    let mut dependencies = 0;
    out.push_str(HEADER);
    out.push_str("services:\n");
    for i in 0..services {
        let role = &ROLES[i % ROLES.len()];
        let name = service_name(i);
        // A few leaf services live behind a profile: nothing depends on them (see below).
        let debug_only = i % 97 == 96;
        let _ = writeln!(out, "  {name}:");
        merge(&mut out, "service-defaults", "    ");
        let _ = writeln!(out, "    image: \"{}\"", role.image);
        if debug_only {
            out.push_str("    profiles: [\"debug\"]\n");
        }
        if role.name == "worker" {
            let _ = writeln!(
                out,
                "    command: [\"/app/worker\", \"--queue\", \"jobs-{}\", \"--concurrency\", \"${{WORKER_CONCURRENCY:-4}}\"]",
                i % 16
            );
        }
        // Environment: map syntax for most, list syntax for some, as in real files.
        if rng.chance(70) {
            out.push_str("    environment:\n");
            let _ = writeln!(out, "      SERVICE_NAME: {name}");
            let _ = writeln!(out, "      LOG_LEVEL: ${{LOG_LEVEL:-info}}");
            let _ = writeln!(
                out,
                "      DATABASE_URL: \"postgres://${{DB_USER:-app}}:${{DB_PASSWORD}}@{}:5432/app\"",
                service_name(db_for(i))
            );
            let _ = writeln!(out, "      TEMPLATE: \"$${{NOT_INTERPOLATED}}\"");
            let _ = writeln!(out, "      SHARD: \"{}\"", i % 32);
        } else {
            out.push_str("    environment:\n");
            let _ = writeln!(out, "      - SERVICE_NAME={name}");
            out.push_str("      - REGION=${REGION:-eu-west-1}\n");
            out.push_str("      - FEATURE_FLAGS=${FEATURE_FLAGS:-search,checkout}\n");
        }
        // Published ports: unique host ports, short and long syntax.
        if i % 3 == 0 {
            out.push_str("    ports:\n");
            match rng.below(3) {
                0 => {
                    let _ = writeln!(out, "      - \"{}:{}\"", 10000 + i, role.port);
                }
                1 => {
                    let _ = writeln!(out, "      - \"127.0.0.1:{}:{}/tcp\"", 10000 + i, role.port);
                }
                _ => {
                    let _ = writeln!(out, "      - target: {}", role.port);
                    let _ = writeln!(out, "        published: \"{}\"", 10000 + i);
                    out.push_str("        protocol: tcp\n");
                    out.push_str("        mode: host\n");
                }
            }
        } else {
            let _ = writeln!(out, "    expose: [\"{}\"]", role.port);
        }
        // Dependencies on earlier, enabled services only: acyclic, and never on a profile.
        let wanted = if i == 0 { 0 } else { rng.below(4) };
        let mut deps: Vec<usize> = Vec::new();
        for _ in 0..wanted {
            // Mostly nearby services (deep chains), sometimes anything earlier (wide fan-in).
            let j = if rng.chance(70) {
                i.saturating_sub(1 + rng.below(i.min(20)))
            } else {
                rng.below(i)
            };
            if !deps.contains(&j) && j % 97 != 96 {
                deps.push(j);
            }
        }
        if !deps.is_empty() {
            dependencies += deps.len();
            out.push_str("    depends_on:\n");
            if rng.chance(30) {
                for j in &deps {
                    let _ = writeln!(out, "      - {}", service_name(*j));
                }
            } else {
                for j in &deps {
                    let _ = writeln!(out, "      {}:", service_name(*j));
                    let c = CONDITIONS[rng.below(CONDITIONS.len())];
                    let _ = writeln!(out, "        condition: {c}");
                }
            }
        }
        out.push_str("    healthcheck:\n");
        merge(&mut out, "healthcheck-defaults", "      ");
        let _ = writeln!(out, "      test: {}", role.health);
        out.push_str("    deploy:\n");
        let _ = writeln!(out, "      replicas: {}", 1 + rng.below(3));
        out.push_str("      resources:\n");
        if rng.chance(50) {
            merge(&mut out, "small-resources", "        ");
        } else {
            let cpus = [0.25, 0.5, 1.0, 2.0][rng.below(4)];
            let mem = ["128M", "256m", "512m", "1g", "1.5G"][rng.below(5)];
            let _ = writeln!(
                out,
                "        limits:\n          cpus: \"{cpus}\"\n          memory: {mem}"
            );
            out.push_str("        reservations:\n          cpus: \"0.1\"\n          memory: 64M\n");
        }
        if role.name == "db" {
            let _ = writeln!(
                out,
                "    volumes:\n      - data-{i:05}:/var/lib/postgresql/data"
            );
        }
        if role.name == "web" {
            out.push_str("    networks: [frontend, backend]\n");
        } else {
            out.push_str("    networks:\n      backend:\n        aliases: [\"");
            let _ = write!(out, "{}-{}", role.name, i / ROLES.len());
            out.push_str("\"]\n");
        }
    }
    out.push_str("networks:\n  frontend: {}\n  backend:\n    driver: bridge\n");
    let dbs: Vec<usize> = (0..services)
        .filter(|i| ROLES[i % ROLES.len()].name == "db")
        .collect();
    if !dbs.is_empty() {
        out.push_str("volumes:\n");
        for i in dbs {
            let _ = writeln!(out, "  data-{i:05}: {{}}");
        }
    }
    Generated {
        compose: out,
        env: ENV.to_string(),
        services,
        dependencies,
    }
}

/// The database service a service's `DATABASE_URL` points at (any `db` role service; the
/// first one when there is none before it).
fn db_for(i: usize) -> usize {
    let db = ROLES.iter().position(|r| r.name == "db").unwrap_or(0);
    (i / ROLES.len()) * ROLES.len() + db
}

const HEADER: &str = r#"# Generated by compose_fleet::testgen: a synthetic but realistic project.
x-service-defaults: &service-defaults
  restart: unless-stopped
  labels:
    com.example.team: "shop"
    com.example.generated: "true"
  stop_grace_period: 20s
x-healthcheck-defaults: &healthcheck-defaults
  interval: 10s
  timeout: 3s
  retries: 5
  start_period: 30s
x-small-resources: &small-resources
  limits:
    cpus: "0.5"
    memory: 256M
  reservations:
    cpus: "0.1"
    memory: 64M
"#;

const ENV: &str = "TAG=2.0.1\nDB_PASSWORD=s3cret\nLOG_LEVEL=warn\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(generate(50, 7), generate(50, 7));
        assert_ne!(generate(50, 7).compose, generate(50, 8).compose);
    }

    #[test]
    fn inlined_defaults_have_no_aliases() {
        let g = generate_with(30, 5, false);
        assert!(!g.compose.contains("<<:") && !g.compose.contains(": *"));
        assert_eq!(
            g.compose.matches("restart: unless-stopped").count(),
            // The header's anchor, plus one per service.
            31
        );
        assert_eq!(g.dependencies, generate(30, 5).dependencies);
    }

    #[test]
    fn every_service_is_written_once() {
        let g = generate(200, 1);
        for i in 0..200 {
            assert_eq!(
                g.compose
                    .matches(&format!("\n  {}:\n", service_name(i)))
                    .count(),
                1
            );
        }
        assert!(g.dependencies > 100, "{} edges", g.dependencies);
    }
}
