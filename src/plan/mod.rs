//! The plan: the fleet as placement sees it (declared capacity or host facts), the placement of
//! every replica, and its two renderings — the text report `compose-fleet plan` prints and the
//! JSON contract. Pure: facts and observed state come in as values.
//!
//! The JSON is a stable contract (documented in the README):
//!
//! ```json
//! {"placements":   [{"service": "web", "replica": 1, "host": "web-1", "pod": "web"}],
//!  "unschedulable":[{"service": "db", "replica": 2, "reasons": ["3 lack memory (needs 4 GiB, most free 2.5 GiB)"]}],
//!  "hosts":        [{"name": "web-1", "cpus": 4.0, "memory": 8589934592,
//!                    "cpus_reserved": 0.5, "memory_reserved": 268435456, "ports": ["8080/tcp"]}]}
//! ```

pub mod podspec;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::RangeInclusive;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::compose::model::Project;
use crate::diag::Diagnostics;
use crate::human::{format_bytes, format_cpus};
use crate::inventory::{normalize_arch, Fleet};
use crate::schedule::units::{self, Amount};
use crate::schedule::{self, Node, NodeState, Observed, Placement};

/// What a host reports about itself (from the `hosts` transport).
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub cpus: f64,
    /// Bytes.
    pub memory: u64,
    /// As `uname -m` spells it.
    pub arch: String,
}

/// Every host's facts, by host name.
pub type Facts = BTreeMap<String, HostFacts>;

/// Why no plan could be made.
#[derive(Debug)]
pub enum PlanError {
    /// The project cannot be placed as written (e.g. an unreadable constraint).
    Project(Diagnostics),
    /// The fleet lacks something placement needs; the message says what to do.
    Fleet(String),
}

/// Hosts with their declared capacity only: what `plan --offline` uses. Every host must declare
/// `capacity`.
pub fn nodes_offline(fleet: &Fleet) -> Result<Vec<Node>, PlanError> {
    let missing: Vec<&str> = fleet
        .hosts
        .iter()
        .filter(|h| h.capacity.is_none())
        .map(|h| h.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::Fleet(format!(
            "{} declare{} no capacity: {} (planning offline needs `capacity: {{ cpus: N, memory: SIZE }}` \
             on every host in the inventory, or host facts from the `hosts` transport)",
            plural(missing.len(), "host"),
            if missing.len() == 1 { "s" } else { "" },
            missing.join(", ")
        )));
    }
    Ok(nodes_with_facts(fleet, None))
}

/// Hosts with capacity and arch from the inventory where declared, else from `facts`. With
/// facts given, a host without facts is unreachable (it gets nothing new).
pub fn nodes_with_facts(fleet: &Fleet, facts: Option<&Facts>) -> Vec<Node> {
    fleet
        .hosts
        .iter()
        .map(|h| {
            let fact = facts.and_then(|f| f.get(&h.name));
            let capacity = h
                .capacity
                .map(|c| Amount::from_cpus(c.cpus, c.memory))
                .or_else(|| fact.map(|f| Amount::from_cpus(f.cpus, f.memory)))
                .unwrap_or_default();
            let reserved = Amount::from_cpus(h.reserved.cpus, h.reserved.memory);
            let state = if facts.is_some() && fact.is_none() {
                NodeState::Unreachable
            } else if h.drain {
                NodeState::Draining
            } else {
                NodeState::Ready
            };
            Node {
                name: h.name.clone(),
                labels: h.labels.clone(),
                arch: h
                    .arch
                    .clone()
                    .or_else(|| fact.map(|f| normalize_arch(&f.arch))),
                allocatable: capacity.saturating_sub(reserved),
                state,
            }
        })
        .collect()
}

/// Plans onto empty hosts with declared capacities, contacting nobody.
pub fn plan_offline(project: &Project, fleet: &Fleet) -> Result<Placement, PlanError> {
    let nodes = nodes_offline(fleet)?;
    schedule::place(project, &nodes, &[]).map_err(PlanError::Project)
}

/// Plans with facts gathered from the hosts and the replicas running now (sticky).
pub fn plan_with_facts(
    project: &Project,
    fleet: &Fleet,
    facts: &Facts,
    observed: &[Observed],
) -> Result<Placement, PlanError> {
    let nodes = nodes_with_facts(fleet, Some(facts));
    schedule::place(project, &nodes, observed).map_err(PlanError::Project)
}

/// Per-replica demand of every service, for the report.
pub fn demands(project: &Project) -> BTreeMap<String, Amount> {
    project
        .services
        .iter()
        .map(|(n, s)| (n.clone(), units::demand(s)))
        .collect()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{}%", (part as f64 * 100.0 / whole as f64).round() as u64)
    }
}

/// The text report: unschedulable replicas first, then a table per host, then a summary.
pub fn render_text(placement: &Placement, demands: &BTreeMap<String, Amount>) -> String {
    let mut out = String::new();
    if !placement.unschedulable.is_empty() {
        let _ = writeln!(
            out,
            "UNSCHEDULABLE: {} cannot be placed",
            plural(placement.unschedulable.len(), "replica")
        );
        for u in &placement.unschedulable {
            let _ = writeln!(out, "  {}", u.explain());
        }
        out.push('\n');
    }
    for h in &placement.hosts {
        let state = match h.state {
            NodeState::Ready => "",
            NodeState::Draining => " (draining)",
            NodeState::Unreachable => " (unreachable)",
        };
        let _ = write!(
            out,
            "{}{state}: cpu {}/{} ({}), memory {}/{} ({})",
            h.name,
            format_cpus(h.used.cpu_millis),
            format_cpus(h.allocatable.cpu_millis),
            percent(h.used.cpu_millis, h.allocatable.cpu_millis),
            format_bytes(h.used.memory),
            format_bytes(h.allocatable.memory),
            percent(h.used.memory, h.allocatable.memory),
        );
        if !h.ports.is_empty() {
            let ports: Vec<String> = h.ports.iter().map(ToString::to_string).collect();
            let _ = write!(out, ", ports {}", ports.join(" "));
        }
        out.push('\n');
        if h.replicas.is_empty() {
            let _ = writeln!(out, "  (nothing)");
            out.push('\n');
            continue;
        }
        let mut by_service: BTreeMap<&str, Vec<&RangeInclusive<u32>>> = BTreeMap::new();
        for (s, r) in &h.replicas {
            by_service.entry(s).or_default().push(r);
        }
        let mut rows = vec![[
            "SERVICE".to_string(),
            "REPLICAS".to_string(),
            "CPU".to_string(),
            "MEMORY".to_string(),
        ]];
        for (s, runs) in &by_service {
            let d = demands.get(*s).copied().unwrap_or_default();
            let n: u64 = runs
                .iter()
                .map(|r| u64::from(r.end() - r.start()) + 1)
                .sum();
            rows.push([
                s.to_string(),
                runs.iter()
                    .map(|r| replica_run(r))
                    .collect::<Vec<_>>()
                    .join(" "),
                format_cpus(d.cpu_millis * n),
                format_bytes(d.memory * n),
            ]);
        }
        let widths: Vec<usize> = (0..4)
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            // Padded by hand: a `{:w$}` width over 65535 panics, and the replica column of
            // a host with 10,000 replicas is wider than that.
            let mut line = String::from("  ");
            for (cell, width) in r.iter().zip(&widths).take(3) {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.len() + 2));
            }
            line.push_str(&r[3]);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out.push('\n');
    }
    let used = placement
        .hosts
        .iter()
        .filter(|h| !h.replicas.is_empty())
        .count();
    let services: std::collections::BTreeSet<&str> = placement
        .assignments
        .iter()
        .map(|a| a.service.as_str())
        .collect();
    let _ = write!(
        out,
        "{} of {} on {} of {}",
        plural(placement.replica_count(), "replica"),
        plural(services.len(), "service"),
        used,
        plural(placement.hosts.len(), "host"),
    );
    if placement.unschedulable.is_empty() {
        out.push_str("; everything is placed\n");
    } else {
        let _ = writeln!(
            out,
            "; {} unschedulable",
            plural(placement.unschedulable.len(), "replica")
        );
    }
    out
}

/// A run of replicas in the text report: `#3`, `#3 #4`, or `#3-#9` for three or more, so that
/// a host with a million replicas of a service prints one range, not a million numbers.
fn replica_run(r: &RangeInclusive<u32>) -> String {
    match r.end().saturating_sub(*r.start()) {
        0 => format!("#{}", r.start()),
        1 => format!("#{} #{}", r.start(), r.end()),
        _ => format!("#{}-#{}", r.start(), r.end()),
    }
}

/// The JSON contract (see the module documentation), as a value.
pub fn to_json(placement: &Placement) -> serde_json::Value {
    serde_json::to_value(Contract(placement)).unwrap_or_default()
}

/// Writes the JSON contract (pretty) to `out`, expanding the replica runs one at a time as they
/// are written: nothing is held per replica.
pub fn write_json(placement: &Placement, out: &mut impl std::io::Write) -> serde_json::Result<()> {
    serde_json::to_writer_pretty(out, &Contract(placement))
}

/// The contract's shape. Fields are declared in key order, the order `serde_json::Value` (a
/// sorted map) prints them in, so that both ways of writing it give the same bytes.
struct Contract<'a>(&'a Placement);

impl Serialize for Contract<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pl = self.0;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("hosts", &Seq(|| pl.hosts.iter().map(HostJson)))?;
        m.serialize_entry(
            "placements",
            &Seq(|| {
                pl.replicas().map(|r| PlacementJson {
                    host: r.host,
                    pod: r.pod,
                    replica: r.replica,
                    service: r.service,
                })
            }),
        )?;
        m.serialize_entry(
            "unschedulable",
            &Seq(|| {
                pl.unschedulable.iter().flat_map(|u| {
                    u.services.iter().map(move |s| UnschedulableJson {
                        reasons: &u.reasons,
                        replica: u.replica,
                        service: s,
                    })
                })
            }),
        )?;
        m.end()
    }
}

/// A sequence written from an iterator made afresh each time it is serialized.
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

#[derive(serde::Serialize)]
struct PlacementJson<'a> {
    host: &'a str,
    pod: &'a str,
    replica: u32,
    service: &'a str,
}

#[derive(serde::Serialize)]
struct UnschedulableJson<'a> {
    reasons: &'a [String],
    replica: u32,
    service: &'a str,
}

struct HostJson<'a>(&'a schedule::HostUse);

impl Serialize for HostJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("cpus", &(h.allocatable.cpu_millis as f64 / 1000.0))?;
        m.serialize_entry("cpus_reserved", &(h.used.cpu_millis as f64 / 1000.0))?;
        m.serialize_entry("memory", &h.allocatable.memory)?;
        m.serialize_entry("memory_reserved", &h.used.memory)?;
        m.serialize_entry("name", &h.name)?;
        m.serialize_entry(
            "ports",
            &h.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{self, Environment, LoadOptions, MemoryFs};

    fn placement() -> Placement {
        let fs = MemoryFs::new().with(
            "/p/compose.yaml",
            "services:\n  web:\n    image: nginx\n    deploy: { replicas: 7 }\n    \
             ports: [\"8080\"]\n  db:\n    image: postgres\n    deploy: { replicas: 2, \
             resources: { reservations: { memory: 6G } } }\n",
        );
        let mut opts = LoadOptions::for_file("/p/compose.yaml");
        opts.project_name = Some("t".into());
        let project = compose::load(&opts, &Environment::new(), &fs)
            .expect("loads")
            .project;
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node {
                name: format!("h{i}"),
                labels: BTreeMap::new(),
                arch: None,
                allocatable: Amount::from_cpus(4.0, 8 << 30),
                state: NodeState::Ready,
            })
            .collect();
        schedule::place(&project, &nodes, &[]).expect("places")
    }

    /// The streamed contract is the same bytes as the value's pretty print (keys in the sorted
    /// order a `serde_json::Value` prints them), with one entry per replica.
    #[test]
    fn streamed_json_is_the_contract_replica_by_replica() {
        let pl = placement();
        let mut streamed = Vec::new();
        write_json(&pl, &mut streamed).expect("writes");
        let value = to_json(&pl);
        let pretty = serde_json::to_string_pretty(&value).expect("prints");
        assert_eq!(String::from_utf8_lossy(&streamed), pretty);
        let placements = value["placements"].as_array().expect("placements");
        let unschedulable = value["unschedulable"].as_array().expect("unschedulable");
        assert_eq!(placements.len() + unschedulable.len(), 9);
        assert_eq!(placements.len(), pl.replica_count());
        let first = &placements[0];
        let keys: Vec<&String> = first.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["host", "pod", "replica", "service"]);
    }

    #[test]
    fn runs_of_three_or_more_print_as_a_range() {
        assert_eq!(replica_run(&(4..=4)), "#4");
        assert_eq!(replica_run(&(4..=5)), "#4 #5");
        assert_eq!(replica_run(&(4..=6)), "#4-#6");
    }
}
