//! What has to be placed: one [`Group`] per colocation of the pod model ([`crate::pods`]), with
//! replica counts, resource demand, published ports and placement constraints read from the
//! compose model. Nothing here looks at hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::compose::model::{Project, Service};
use crate::diag::{Diagnostic, Diagnostics};
use crate::pods;

/// Demand assumed for a service that declares neither reservations nor limits: a tenth of a
/// cpu and 64 MiB, so that such services still count and a fleet cannot be overfilled with them.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
pub const DEFAULT_MEMORY: u64 = 64 << 20;

/// Resource amounts in exact units: thousandths of a cpu and bytes. Integers, so that summing
/// `0.1` cpus three times fills a `0.3` cpu host exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Amount {
    pub cpu_millis: u64,
    pub memory: u64,
}

impl Amount {
    pub fn from_cpus(cpus: f64, memory: u64) -> Amount {
        Amount {
            cpu_millis: cpus_to_millis(cpus),
            memory,
        }
    }

    pub fn saturating_sub(self, o: Amount) -> Amount {
        Amount {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory: self.memory.saturating_sub(o.memory),
        }
    }

    pub fn plus(self, o: Amount) -> Amount {
        Amount {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory: self.memory + o.memory,
        }
    }

    pub fn fits_in(self, free: Amount) -> bool {
        self.cpu_millis <= free.cpu_millis && self.memory <= free.memory
    }
}

pub fn cpus_to_millis(cpus: f64) -> u64 {
    if cpus.is_finite() && cpus > 0.0 {
        (cpus * 1000.0).round() as u64
    } else {
        0
    }
}

/// One published host port: what two pods on one host must not both claim.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// `None` for every address (`0.0.0.0`, `::` or no `host_ip`), which conflicts with any IP.
    pub ip: Option<String>,
    pub port: u16,
    pub protocol: String,
}

impl PortKey {
    /// Two bindings conflict when port and protocol match and either binds every address or
    /// both bind the same one.
    pub fn conflicts(&self, o: &PortKey) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip.is_none() || o.ip.is_none() || self.ip == o.ip)
    }
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ip {
            Some(ip) if ip.contains(':') => write!(f, "[{ip}]:{}/{}", self.port, self.protocol),
            Some(ip) => write!(f, "{ip}:{}/{}", self.port, self.protocol),
            None => write!(f, "{}/{}", self.port, self.protocol),
        }
    }
}

/// A host attribute a constraint tests.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attribute {
    Hostname,
    Label(String),
    Arch,
    Os,
}

/// `deploy.placement.constraints` entry (or the arch implied by `platform:`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Constraint {
    pub attribute: Attribute,
    pub equal: bool,
    pub value: String,
    /// As the user wrote it, for explanations.
    pub text: String,
}

/// Parses `node.labels.zone == a` and friends. The error says what is wrong.
pub fn parse_constraint(text: &str) -> Result<Constraint, String> {
    let (lhs, rhs, equal) = if let Some((l, r)) = text.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = text.split_once("!=") {
        (l, r, false)
    } else {
        return Err(format!(
            "constraint `{text}` has no `==` or `!=` (expected e.g. `node.labels.zone == a`)"
        ));
    };
    let lhs = lhs.trim();
    let value = rhs
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .to_string();
    if value.is_empty() {
        return Err(format!("constraint `{text}` has nothing to compare with"));
    }
    let attribute = match lhs {
        "node.hostname" => Attribute::Hostname,
        "node.platform.arch" => Attribute::Arch,
        "node.platform.os" => Attribute::Os,
        l => match l.strip_prefix("node.labels.") {
            Some(k) if !k.is_empty() => Attribute::Label(k.to_string()),
            _ => {
                return Err(format!(
                    "constraint `{text}` tests `{l}`, which compose-fleet does not know \
                     (it knows node.hostname, node.labels.<key>, node.platform.arch, node.platform.os)"
                ))
            }
        },
    };
    let value = if attribute == Attribute::Arch {
        crate::inventory::normalize_arch(&value)
    } else {
        value
    };
    Ok(Constraint {
        attribute,
        equal,
        value,
        text: text.trim().to_string(),
    })
}

/// What placement puts on one host as a unit: one colocation of the pod model (pods tied to one
/// host by `volumes_from` or a shared local volume; usually a single pod). Instance `r` of a group
/// runs replica `r` of each of its services. Displayed as its services joined with `+`.
#[derive(Debug, Clone)]
pub struct Group {
    /// The colocation's name (its first pod's).
    pub name: String,
    /// Every service of every pod of the colocation, sorted by name.
    pub services: Vec<String>,
    /// The pod of each service (in `services` order), as [`crate::pods`] names it.
    pub pods: Vec<String>,
    /// How many instances: one per eligible host when `global`.
    pub replicas: u32,
    pub global: bool,
    /// Replica counts of each service (in `services` order): a pod instance `r` runs the
    /// services whose count is at least `r`.
    pub service_replicas: Vec<u32>,
    /// The shapes of the instances, as runs: `(first replica, shape)`, by first replica; a run
    /// lasts until the next one starts. One entry per distinct set of running services (usually
    /// one in all), so that a service of a million identical replicas costs one entry, not a
    /// million.
    pub shape_runs: Vec<(u32, usize)>,
    /// Label keys from `preferences: - spread: node.labels.KEY`.
    pub spread: Vec<String>,
}

impl Group {
    /// The pod `service` runs in, if it is one of the group's.
    pub fn pod_of(&self, service: &str) -> Option<&str> {
        let i = self.services.iter().position(|s| s == service)?;
        self.pods.get(i).map(String::as_str)
    }

    /// The shape of instance `replica` (1-based).
    pub fn shape_of(&self, replica: u32) -> usize {
        let after = self
            .shape_runs
            .partition_point(|&(first, _)| first <= replica);
        self.shape_runs
            .get(after.saturating_sub(1))
            .map_or(0, |&(_, shape)| shape)
    }

    /// Whether every instance has the same shape (runs the same services).
    pub fn uniform(&self) -> bool {
        self.shape_runs.len() <= 1
    }

    pub fn display(&self) -> String {
        self.services.join("+")
    }
}

/// Everything the filters need about one kind of group instance.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Index into [`Units::groups`].
    pub group: usize,
    /// Services running in instances of this shape.
    pub services: Vec<String>,
    pub demand: Amount,
    pub ports: Vec<PortKey>,
    /// Two of the pod's own ports collide: it fits nowhere.
    pub self_conflict: Option<PortKey>,
    pub constraints: Vec<Constraint>,
    /// `max_replicas_per_node` of the services in this shape that set it.
    pub limits: Vec<(String, u32)>,
}

/// The placement problem derived from a project.
#[derive(Debug, Clone, Default)]
pub struct Units {
    pub groups: Vec<Group>,
    pub shapes: Vec<Shape>,
    /// service → group index.
    pub group_of: BTreeMap<String, usize>,
}

/// A service's demand per replica: reservations, else limits, else the legacy keys, else
/// [`DEFAULT_CPU_MILLIS`] / [`DEFAULT_MEMORY`] — each dimension on its own.
pub fn demand(s: &Service) -> Amount {
    let res = s.deploy.as_ref().map(|d| &d.resources);
    let reservations = res.and_then(|r| r.reservations.as_ref());
    let limits = res.and_then(|r| r.limits.as_ref());
    let cpu = reservations
        .and_then(|r| r.cpus)
        .or_else(|| limits.and_then(|l| l.cpus))
        .or(s.cpus)
        .map(cpus_to_millis)
        .unwrap_or(DEFAULT_CPU_MILLIS);
    let memory = reservations
        .and_then(|r| r.memory)
        .or(s.mem_reservation)
        .or_else(|| limits.and_then(|l| l.memory))
        .or(s.mem_limit)
        .map(|b| b.0)
        .unwrap_or(DEFAULT_MEMORY);
    Amount {
        cpu_millis: cpu,
        memory,
    }
}

/// Whether the service runs one replica per eligible host.
pub fn is_global(s: &Service) -> bool {
    s.deploy
        .as_ref()
        .and_then(|d| d.mode.as_deref())
        .is_some_and(|m| m == "global")
}

/// Replicas of a replicated service: `deploy.replicas`, else `scale`, else 1.
pub fn replicas(s: &Service) -> u32 {
    s.deploy
        .as_ref()
        .and_then(|d| d.replicas)
        .or(s.scale)
        .unwrap_or(1)
}

/// The published host ports of a service.
pub fn ports(s: &Service) -> Vec<PortKey> {
    let mut out = Vec::new();
    for p in &s.ports {
        let ip = p
            .host_ip
            .as_deref()
            .map(|ip| ip.trim_matches(|c| c == '[' || c == ']'))
            .filter(|ip| !ip.is_empty() && *ip != "0.0.0.0" && *ip != "::")
            .map(str::to_string);
        let protocol = if p.protocol.is_empty() {
            "tcp".to_string()
        } else {
            p.protocol.to_ascii_lowercase()
        };
        for port in p.published_ports() {
            out.push(PortKey {
                ip: ip.clone(),
                port,
                protocol: protocol.clone(),
            });
        }
    }
    out
}

/// Builds the pods and shapes of a project; constraint errors point at the compose file.
pub fn build(project: &Project) -> Result<Units, Diagnostics> {
    // What compose accepts but the fleet cannot run stops placement (`config` only warns).
    let mut diags = Diagnostics(project.unrunnable.clone());
    let mut units = Units::default();
    let model = pods::of(project);
    for colocation in &model.colocations {
        let members = model.services_of(colocation);
        let pod_names: Vec<String> = members
            .iter()
            .map(|m| {
                model
                    .pod_of(m)
                    .map_or_else(|| m.clone(), |p| p.name.clone())
            })
            .collect();
        let pod_index = units.groups.len();
        let services: Vec<&Service> = members.iter().map(|m| &project.services[m]).collect();
        let global = services.iter().any(|s| is_global(s));
        let service_replicas: Vec<u32> = services
            .iter()
            .map(|s| if global { 1 } else { replicas(s) })
            .collect();
        let count = service_replicas.iter().copied().max().unwrap_or(0);
        // Constraints per service: an instance obeys those of the services it runs.
        let mut constraints_of: Vec<BTreeSet<Constraint>> = vec![BTreeSet::new(); members.len()];
        let mut spread = Vec::new();
        let mut limit_of: BTreeMap<&str, u32> = BTreeMap::new();
        for (m, (name, s)) in members.iter().zip(&services).enumerate() {
            let constraints = &mut constraints_of[m];
            let placement = s.deploy.as_ref().map(|d| &d.placement);
            for (k, text) in placement
                .map(|p| &p.constraints[..])
                .unwrap_or(&[])
                .iter()
                .enumerate()
            {
                match parse_constraint(text) {
                    Ok(c) => {
                        constraints.insert(c);
                    }
                    Err(e) => {
                        let mut d = Diagnostic::error(format!("service `{name}`: {e}"));
                        if let Some(loc) = s.spans.constraints.get(k) {
                            d = d.at(loc.clone());
                        }
                        diags.push(
                            d.hint("write e.g. `node.labels.zone == a` or `node.hostname != db-1`"),
                        );
                    }
                }
            }
            if let Some(platform) = &s.platform {
                let mut parts = platform.split('/');
                let os = parts.next().unwrap_or("");
                if let Some(arch) = parts.next() {
                    constraints.insert(Constraint {
                        attribute: Attribute::Arch,
                        equal: true,
                        value: crate::inventory::normalize_arch(arch),
                        text: format!("platform: {platform}"),
                    });
                }
                if !os.is_empty() {
                    constraints.insert(Constraint {
                        attribute: Attribute::Os,
                        equal: true,
                        value: os.to_string(),
                        text: format!("platform: {platform}"),
                    });
                }
            }
            for pref in placement.map(|p| &p.preferences[..]).unwrap_or(&[]) {
                match pref.spread.strip_prefix("node.labels.") {
                    Some(k) if !k.is_empty() => {
                        if !spread.iter().any(|x| x == k) {
                            spread.push(k.to_string());
                        }
                    }
                    _ => {
                        let mut d = Diagnostic::error(format!(
                            "service `{name}`: cannot spread over `{}`",
                            pref.spread
                        ));
                        d.location = Some(s.spans.name.clone()).filter(|l| !l.file.is_empty());
                        diags.push(d.hint("spread over a host label: `spread: node.labels.zone`"));
                    }
                }
            }
            if let Some(m) = placement.and_then(|p| p.max_replicas_per_node) {
                limit_of.insert(name, m);
            }
        }
        // One shape per distinct set of running services (usually just one).
        let mut shapes_of_pod: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
        let mut shape_runs = Vec::new();
        // The set of running services changes only after the last replica of a service: one run
        // per such point, never one entry per replica.
        let last = count.max(1);
        let mut starts: Vec<u32> = std::iter::once(1)
            .chain(
                service_replicas
                    .iter()
                    .map(|&n| n.saturating_add(1))
                    .filter(|&r| r > 1 && r <= last),
            )
            .collect();
        starts.sort_unstable();
        starts.dedup();
        for r in starts {
            let running: Vec<usize> = (0..members.len())
                .filter(|&i| service_replicas[i] >= r || global)
                .collect();
            let shape = *shapes_of_pod.entry(running.clone()).or_insert_with(|| {
                let mut demand_sum = Amount::default();
                let mut port_list: Vec<PortKey> = Vec::new();
                let mut self_conflict = None;
                for &i in &running {
                    demand_sum = demand_sum.plus(demand(services[i]));
                    for p in ports(services[i]) {
                        if self_conflict.is_none() {
                            self_conflict = port_list.iter().find(|q| q.conflicts(&p)).cloned();
                        }
                        port_list.push(p);
                    }
                }
                units.shapes.push(Shape {
                    group: pod_index,
                    services: running.iter().map(|&i| members[i].clone()).collect(),
                    demand: demand_sum,
                    ports: port_list,
                    self_conflict,
                    constraints: running
                        .iter()
                        .flat_map(|&i| constraints_of[i].iter().cloned())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                    limits: running
                        .iter()
                        .filter_map(|&i| {
                            limit_of
                                .get(members[i].as_str())
                                .map(|&m| (members[i].clone(), m))
                        })
                        .collect(),
                });
                units.shapes.len() - 1
            });
            shape_runs.push((r, shape));
        }
        for m in &members {
            units.group_of.insert(m.clone(), pod_index);
        }
        units.groups.push(Group {
            name: colocation.name.clone(),
            services: members,
            pods: pod_names,
            replicas: if global { 0 } else { count },
            global,
            service_replicas,
            shape_runs,
            spread,
        });
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse() {
        for (text, attr, equal, value) in [
            ("node.hostname == web-1", Attribute::Hostname, true, "web-1"),
            (
                "node.labels.zone!=a",
                Attribute::Label("zone".into()),
                false,
                "a",
            ),
            (
                "node.labels.group.web == true",
                Attribute::Label("group.web".into()),
                true,
                "true",
            ),
            (
                "node.platform.arch == amd64",
                Attribute::Arch,
                true,
                "x86_64",
            ),
            (
                "node.platform.os == \"linux\"",
                Attribute::Os,
                true,
                "linux",
            ),
        ] {
            let c = parse_constraint(text).unwrap();
            assert_eq!(
                (c.attribute, c.equal, c.value.as_str()),
                (attr, equal, value),
                "{text}"
            );
        }
        for bad in [
            "node.role == manager",
            "node.labels.zone",
            "node.hostname ==",
            "engine.labels.x == 1",
        ] {
            assert!(parse_constraint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_conflicts_follow_ip_and_protocol() {
        let k = |ip: Option<&str>, port, proto: &str| PortKey {
            ip: ip.map(str::to_string),
            port,
            protocol: proto.into(),
        };
        for (a, b, conflict) in [
            (k(None, 80, "tcp"), k(None, 80, "tcp"), true),
            (k(None, 80, "tcp"), k(Some("10.0.0.1"), 80, "tcp"), true),
            (
                k(Some("10.0.0.1"), 80, "tcp"),
                k(Some("10.0.0.2"), 80, "tcp"),
                false,
            ),
            (
                k(Some("10.0.0.1"), 80, "tcp"),
                k(Some("10.0.0.1"), 80, "tcp"),
                true,
            ),
            (k(None, 80, "tcp"), k(None, 80, "udp"), false),
            (k(None, 80, "tcp"), k(None, 81, "tcp"), false),
        ] {
            assert_eq!(a.conflicts(&b), conflict, "{a} vs {b}");
            assert_eq!(b.conflicts(&a), conflict, "{b} vs {a}");
        }
    }
}
