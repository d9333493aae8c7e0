//! Placement: a pipeline of filters and scorers that puts every replica on a host, and explains
//! every replica it cannot place. Pure: no I/O, no clocks, no randomness — the same project, hosts
//! and observed state give the same [`Placement`]. `schedule` knows nothing about SSH.
//!
//! The pipeline, wired in `Engine::check` (filters, `engine.rs`), `Engine::score` (scorers) and
//! `Engine::run` (the stages, in this file):
//!
//! | stage | kind | module |
//! | --- | --- | --- |
//! | host state (draining, unreachable) | filter | [`filter::host_ready`] |
//! | `deploy.placement.constraints`, `platform` | filter | [`filter::constraints`] |
//! | `max_replicas_per_node` | filter | [`filter::max_per_node`] |
//! | published ports | filter | [`filter::ports`] |
//! | memory, then cpu | filter | [`filter::memory`], [`filter::cpu`] |
//! | bin-packing (dot product of demand and free capacity) | scorer | [`score::binpack`] |
//! | spread of a pod's replicas | scorer | [`score::spread`] |
//! | `preferences: spread: node.labels.KEY` | scorer | [`score::zone_spread`] |
//! | select: best score, ties to the first host in inventory order | select | `select.rs` |
//!
//! Stickiness is a stage of its own rather than a score: replicas that run now ([`Observed`]) are
//! placed first, each on its own host when every filter still passes there. Placing them before
//! anything else is what keeps their host's capacity theirs; a bonus score could not.
//!
//! What is placed is a *group instance*: the services of one colocation of the pod model
//! ([`units::Group`], from [`crate::pods`]) for one replica number, with the sum of their demands
//! and the union of their ports and constraints. The stages, in order (`Engine::run`):
//! stickiness (`sticky.rs`), global groups (`global.rs`), the rest by decreasing size (`order.rs`:
//! the sum of its shares of the fleet's cpu and memory, ties by group and replica; on small
//! problems a second run orders by the L2 norm of the shares and the better plan wins:
//! `SECOND_ORDER_MAX_INSTANCES`), select (`select.rs`), an exhaustive search when greedy left
//! something unplaced on a small problem (`repair.rs`), consolidation (`consolidate.rs`: empty the
//! least loaded hosts into the others; measured, it saves one to three hosts in a hundred), and
//! the explanations of what could not be placed (`explain.rs`).
//!
//! Speed: hosts with identical capacity, labels, arch and state form a *class*; of the empty hosts
//! of a class only the first is ever a candidate (they would score the same). Consecutive instances
//! of the same shape keep their candidates in a heap, since placing one instance changes only the
//! host it went to (`select.rs`).

mod consolidate;
mod engine;
mod explain;
pub mod filter;
mod global;
mod order;
mod repair;
pub mod score;
mod select;
mod sticky;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};

use crate::compose::model::Project;
use crate::diag::Diagnostics;
use engine::Engine;
use order::Order;
use units::{Amount, PortKey};

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `uname -m` spelling; `None` when unknown.
    pub arch: Option<String>,
    /// What pods may use: capacity minus the host's `reserved`.
    pub allocatable: Amount,
    pub state: NodeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    Ready,
    /// Keeps what runs there, gets nothing new.
    Draining,
    /// Did not answer: gets nothing new, and keeps the replicas observed there (recorded by
    /// the others) whatever its filters say.
    Unreachable,
}

/// A replica that is running now.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Observed {
    pub service: String,
    /// Numbered from 1.
    pub replica: u32,
    pub host: String,
}

/// The result: where every replica goes, and which could not be placed and why.
///
/// Replicas are recorded as runs, not one by one: consecutive replicas of one service on one
/// host are one [`Assignment`]. A service of a million identical replicas on ten hosts is about
/// ten assignments, so the placement costs memory in proportion to the hosts it uses, not to the
/// replica count; [`Placement::replicas`] expands the runs for a consumer that needs each one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Placement {
    /// Sorted by service, then replica; runs of one service never overlap, and two runs of one
    /// service that touch are on different hosts.
    pub assignments: Vec<Assignment>,
    /// Sorted by pod, then replica.
    pub unschedulable: Vec<Unplaced>,
    /// Every host, in inventory order, with what was placed on it.
    pub hosts: Vec<HostUse>,
}

/// Replicas `first..=last` of one service, all on one host, in one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub service: String,
    /// Numbered from 1.
    pub first: u32,
    pub last: u32,
    pub host: String,
    /// The pod the replicas run in, as [`crate::pods`] names it (and `graph` prints it).
    pub pod: String,
}

impl Assignment {
    /// One replica.
    pub fn one(service: &str, replica: u32, host: &str, pod: &str) -> Self {
        Assignment {
            service: service.to_string(),
            first: replica,
            last: replica,
            host: host.to_string(),
            pod: pod.to_string(),
        }
    }

    /// The replica numbers.
    pub fn replicas(&self) -> std::ops::RangeInclusive<u32> {
        self.first..=self.last
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.last.saturating_sub(self.first) as usize + usize::from(self.first <= self.last)
    }

    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }
}

/// One placed replica, as [`Placement::replicas`] expands the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Replica<'a> {
    pub service: &'a str,
    pub replica: u32,
    pub host: &'a str,
    pub pod: &'a str,
}

impl Placement {
    /// Every placed replica, by service then replica number. Costs nothing per replica until
    /// iterated: consumers that need each replica (pod specs, the JSON contract) take them one
    /// at a time rather than holding them all.
    pub fn replicas(&self) -> impl Iterator<Item = Replica<'_>> + '_ {
        self.assignments.iter().flat_map(|a| {
            a.replicas().map(move |replica| Replica {
                service: &a.service,
                replica,
                host: &a.host,
                pod: &a.pod,
            })
        })
    }

    /// How many replicas are placed.
    pub fn replica_count(&self) -> usize {
        self.assignments.iter().map(Assignment::len).sum()
    }
}

/// A group instance (one replica of each service of a colocation) no host could take.
#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    /// The colocation's name.
    pub group: String,
    pub services: Vec<String>,
    pub replica: u32,
    /// Replicas wanted in all (for a global pod: eligible hosts).
    pub of: u32,
    pub global: bool,
    /// Hosts considered.
    pub hosts: usize,
    /// The reason histogram, most common first: `3 lack memory (needs 4 GiB, most free 2.5 GiB)`.
    pub reasons: Vec<String>,
}

impl Unplaced {
    /// `db (replica 2/3): 0/5 hosts fit — 3 lack memory (...), 2 have 5432/tcp taken`.
    pub fn explain(&self) -> String {
        let kind = if self.global { ", global" } else { "" };
        format!(
            "{} (replica {}/{}{kind}): 0/{} hosts fit — {}",
            self.services.join("+"),
            self.replica,
            self.of,
            self.hosts,
            self.reasons.join(", ")
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostUse {
    pub name: String,
    pub state: NodeState,
    pub allocatable: Amount,
    /// Sum of the demands placed here.
    pub used: Amount,
    /// Published ports, sorted.
    pub ports: Vec<PortKey>,
    /// The replicas placed here, as runs: (service, first..=last), sorted by service then
    /// replica.
    pub replicas: Vec<(String, std::ops::RangeInclusive<u32>)>,
}

/// Places every replica of `project` on `nodes`, staying on `observed` hosts where possible.
/// Errors are problems in the project (an unreadable constraint), pointing at the compose file.
pub fn place(
    project: &Project,
    nodes: &[Node],
    observed: &[Observed],
) -> Result<Placement, Diagnostics> {
    place_changed(project, nodes, observed, &BTreeSet::new())
}

/// [`place`], knowing which services changed since `observed` was running. Their replicas are
/// recreated anyway, so they are pinned to their hosts only after every unchanged replica is:
/// when a changed service grew and its host is now too small for everything that ran there, the
/// changed service moves, not its neighbours.
pub fn place_changed(
    project: &Project,
    nodes: &[Node],
    observed: &[Observed],
    changed: &BTreeSet<String>,
) -> Result<Placement, Diagnostics> {
    let units = units::build(project)?;
    let first = Engine::new(&units, nodes, Order::SumOfShares).run(observed, changed);
    let instances: u32 = units.groups.iter().map(|p| p.replicas).sum();
    if instances as usize > SECOND_ORDER_MAX_INSTANCES {
        return Ok(first);
    }
    let second = Engine::new(&units, nodes, Order::Norm).run(observed, changed);
    let key = |p: &Placement| {
        (
            p.unschedulable.len(),
            p.hosts.iter().filter(|h| !h.replicas.is_empty()).count(),
        )
    };
    Ok(if key(&second) < key(&first) {
        second
    } else {
        first
    })
}

/// On problems of at most this many instances, the whole pipeline runs a second time with the
/// instances ordered by [`Order::Norm`], and the plan with fewer unschedulable instances, then
/// fewer hosts used, wins (ties keep the first). Neither order wins on every instance; measured
/// in `benches/placement.rs`, taking the better saves about one host in two hundred more.
/// Larger problems pay for one run only, to keep within the speed targets.
const SECOND_ORDER_MAX_INSTANCES: usize = 2_000;

impl Engine<'_> {
    /// The placement pipeline, stage by stage. Each stage places what it can through the same
    /// filters (`Engine::check`) and scorers (`Engine::score`).
    fn run(mut self, observed: &[Observed], changed: &BTreeSet<String>) -> Placement {
        // 0. Hosts grouped by every label a group spreads over, for the zone scorer.
        self.index_zones();
        // 1. Stickiness: replicas running now stay on their host where every filter passes.
        let sticky = self.place_sticky(observed, changed);
        // 2. Global groups: one instance on every host that passes the host-only filters.
        self.place_globals();
        // 3. Order: everything else, largest first.
        let queue = self.queue(&sticky.pinned);
        let before = self.snapshot();
        // 4. Select: each instance to its best-scoring host.
        self.place_greedy(&queue);
        // 5. Repair: on a small problem, search for a complete placement greedy missed.
        self.repair(&queue, before);
        // 6. Consolidate: empty the least loaded hosts into the others.
        self.consolidate(&sticky.pinned);
        // 7. The result, with every replica the stages could not place explained.
        self.finish()
    }
}
