//! Placement: a pipeline of filters and scorers that puts every replica on a host, and explains
//! every replica it cannot place. Pure: no I/O, no clocks, no randomness — the same project, hosts
//! and observed state give the same [`Placement`]. `schedule` knows nothing about SSH.
//!
//! The pipeline, wired in [`Engine::check`] (filters), [`Engine::score`] (scorers) and
//! [`Engine::run`] (the order of placement):
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
//! | select: best score, ties to the first host in inventory order | select | [`Engine::place_run`] |
//!
//! Stickiness is a stage of its own rather than a score: replicas that run now ([`Observed`]) are
//! placed first, each on its own host when every filter still passes there. Placing them before
//! anything else is what keeps their host's capacity theirs; a bonus score could not.
//!
//! What is placed is a *pod instance*: the services of one pod ([`units::pods`]) for one replica
//! number, with the sum of their demands and the union of their ports and constraints. Order
//! matters for quality: observed replicas first (stickiness), then global pods, then the rest by
//! decreasing size (the sum of its shares of the fleet's cpu and memory), ties by pod name and
//! replica (on small problems a second run orders by the L2 norm of the shares and the better
//! plan wins: [`SECOND_ORDER_MAX_INSTANCES`]). If that greedy pass leaves something unplaced on a small problem, an exhaustive search
//! (bounded) looks for a complete placement. Last, consolidation tries to empty the least loaded
//! hosts into the others (bounded too); measured, it saves one to three hosts in a hundred.
//!
//! Speed: hosts with identical capacity, labels, arch and state form a *class*; of the empty hosts
//! of a class only the first is ever a candidate (they would score the same). Consecutive instances
//! of the same pod keep their candidates in a heap, since placing one instance changes only the
//! host it went to.

pub mod filter;
pub mod score;
pub mod units;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::compose::model::Project;
use crate::diag::Diagnostics;
use crate::human::{format_bytes, format_cpus};
use filter::Reject;
use units::{Amount, PortKey, Shape, Units};

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
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Placement {
    /// Sorted by service, then replica.
    pub assignments: Vec<Assignment>,
    /// Sorted by pod, then replica.
    pub unschedulable: Vec<Unplaced>,
    /// Every host, in inventory order, with what was placed on it.
    pub hosts: Vec<HostUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assignment {
    pub service: String,
    pub replica: u32,
    pub host: String,
    /// The pod the replica runs in, as [`crate::pods`] names it (and `graph` prints it).
    pub pod: String,
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
    /// (service, replica) placed here, sorted.
    pub replicas: Vec<(String, u32)>,
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

/// A pod instance waiting for a host.
#[derive(Debug, Clone, Copy)]
struct Instance {
    pod: usize,
    replica: u32,
    shape: usize,
}

/// Where a shape may go before anything is placed (stages 1 and 2, which depend only on the host).
#[derive(Debug, Clone)]
enum Eligible {
    /// Per class: whether its hosts pass. Used when no constraint names a host.
    Classes(Vec<bool>),
    /// The hosts that pass, in order (a `node.hostname` constraint makes classes useless).
    Hosts(Vec<u32>),
}

pub(crate) struct Engine<'a> {
    units: &'a Units,
    nodes: &'a [Node],
    free: Vec<Amount>,
    ports: Vec<Vec<PortKey>>,
    /// Whether anything was placed on the host.
    used: Vec<bool>,
    /// Hosts in use that may still take something.
    in_use: Vec<u32>,
    class_of: Vec<u32>,
    class_hosts: Vec<Vec<u32>>,
    /// Per class: index into `class_hosts` of its first host that may still be empty.
    class_cursor: Vec<usize>,
    /// Host size relative to the largest, for opening the largest empty host first.
    size: Vec<f64>,
    eligible: Vec<Option<Eligible>>,
    /// (replica, host) placed so far, per pod.
    placed: Vec<Vec<(u32, u32)>>,
    /// Instances of `counts_pod` on each host.
    counts: Vec<u32>,
    counts_pod: Option<usize>,
    /// Per spread label: each host's group, and the group count.
    zones: HashMap<String, (Vec<u32>, usize)>,
    /// Per-group counts of (pod, instances placed), for the spread-preference scorer.
    zone_counts: (Option<(usize, usize)>, Vec<Vec<u32>>),
    unplaced: Vec<Unplaced>,
    order: Order,
}

/// How the greedy pass orders the instances it places, largest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Order {
    /// The sum of the instance's shares of the fleet's cpu and memory.
    SumOfShares,
    /// The L2 norm of the two shares.
    Norm,
}

/// On problems of at most this many instances, the whole pipeline runs a second time with the
/// instances ordered by [`Order::Norm`], and the plan with fewer unschedulable instances, then
/// fewer hosts used, wins (ties keep the first). Neither order wins on every instance; measured
/// in `benches/placement.rs`, taking the better saves about one host in two hundred more.
/// Larger problems pay for one run only, to keep within the speed targets.
const SECOND_ORDER_MAX_INSTANCES: usize = 2_000;

#[derive(PartialEq)]
struct Scored(f64, Reverse<u32>);

impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

impl<'a> Engine<'a> {
    pub(crate) fn new(units: &'a Units, nodes: &'a [Node], order: Order) -> Self {
        // Hosts alike in everything placement looks at, except their name.
        type ClassKey<'n> = (
            &'n BTreeMap<String, String>,
            &'n Option<String>,
            Amount,
            NodeState,
        );
        let mut class_ids: HashMap<ClassKey<'_>, u32> = HashMap::new();
        let mut class_of = Vec::with_capacity(nodes.len());
        let mut class_hosts: Vec<Vec<u32>> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let next = class_ids.len() as u32;
            let c = *class_ids
                .entry((&n.labels, &n.arch, n.allocatable, n.state))
                .or_insert(next);
            if c == next {
                class_hosts.push(Vec::new());
            }
            class_hosts[c as usize].push(i as u32);
            class_of.push(c);
        }
        let biggest = nodes.iter().fold(Amount::default(), |m, n| Amount {
            cpu_millis: m.cpu_millis.max(n.allocatable.cpu_millis),
            memory: m.memory.max(n.allocatable.memory),
        });
        let frac = |x: u64, m: u64| if m == 0 { 0.0 } else { x as f64 / m as f64 };
        let size = nodes
            .iter()
            .map(|n| {
                (frac(n.allocatable.cpu_millis, biggest.cpu_millis)
                    + frac(n.allocatable.memory, biggest.memory))
                    / 2.0
            })
            .collect();
        Engine {
            units,
            nodes,
            free: nodes.iter().map(|n| n.allocatable).collect(),
            ports: vec![Vec::new(); nodes.len()],
            used: vec![false; nodes.len()],
            in_use: Vec::new(),
            class_cursor: vec![0; class_hosts.len()],
            class_of,
            class_hosts,
            size,
            eligible: vec![None; units.shapes.len()],
            placed: vec![Vec::new(); units.groups.len()],
            counts: vec![0; nodes.len()],
            counts_pod: None,
            zones: HashMap::new(),
            zone_counts: (None, Vec::new()),
            unplaced: Vec::new(),
            order,
        }
    }

    /// The filter pipeline for one host: the first stage that rejects gives the reason.
    fn check(&mut self, shape: &Shape, h: usize) -> Result<(), Reject> {
        let node = &self.nodes[h];
        // 1. Host state: draining and unreachable hosts take nothing new.
        filter::host_ready(node)?;
        // 2. Constraints (node.hostname, node.labels.*, node.platform.*; `platform:`).
        filter::constraints(shape, node)?;
        self.check_dynamic(shape, h)
    }

    /// Stages 3–6: the ones that change as instances are placed.
    fn check_dynamic(&mut self, shape: &Shape, h: usize) -> Result<(), Reject> {
        // 3. max_replicas_per_node: instances of this pod already here.
        if !shape.limits.is_empty() {
            let on_pod = self.count_on(shape.group, h);
            let pod = &self.units.groups[shape.group];
            let uniform = pod.shapes.iter().all(|&s| s == pod.shapes[0]);
            let placed = &self.placed[shape.group];
            let shapes = &self.units.shapes;
            // Every instance runs every service unless the pod's services differ in replicas.
            filter::max_per_node(shape, |service| {
                if uniform {
                    on_pod
                } else {
                    placed
                        .iter()
                        .filter(|&&(r, x)| {
                            x as usize == h
                                && shapes[pod.shape_of(r)]
                                    .services
                                    .iter()
                                    .any(|s| s == service)
                        })
                        .count() as u32
                }
            })?;
        }
        // 4. Published ports, per (host IP, port, protocol).
        filter::ports(shape, &self.ports[h])?;
        // 5. Memory and 6. cpu: the demand fits in what is free.
        filter::memory(shape.demand, self.free[h])?;
        filter::cpu(shape.demand, self.free[h])
    }

    /// The scorer pipeline for one host that passed every filter.
    fn score(&mut self, shape: &Shape, h: usize) -> f64 {
        let pod = &self.units.groups[shape.group];
        let replicas = pod.replicas.max(self.placed[shape.group].len() as u32 + 1);
        // Bin-packing: fill hosts in use, where what is free best matches what is needed.
        let mut s = score::binpack(
            shape.demand,
            self.free[h],
            self.nodes[h].allocatable,
            !self.used[h],
            self.size[h],
        );
        // Spread: fewer instances of this pod on the host is better.
        s += score::spread(self.count_on(shape.group, h), replicas);
        // Spread preferences: fewer instances in the host's group (zone) is better.
        if !pod.spread.is_empty() {
            let placed = self.placed[shape.group].len();
            if self.zone_counts.0 != Some((shape.group, placed)) {
                self.zone_counts = (Some((shape.group, placed)), self.count_zones(shape.group));
            }
            for (k, key) in pod.spread.iter().enumerate() {
                let per_zone = &self.zone_counts.1[k];
                let least = per_zone.iter().copied().min().unwrap_or(0);
                let zone = self.zones[key].0[h] as usize;
                s += score::zone_spread(per_zone[zone], least, replicas);
            }
        }
        s
    }

    /// Instances of `pod` per group, for each of its spread labels.
    fn count_zones(&self, pod: usize) -> Vec<Vec<u32>> {
        self.units.groups[pod]
            .spread
            .iter()
            .map(|key| {
                let (zone_of, zones) = &self.zones[key];
                let mut per_zone = vec![0u32; *zones];
                for &(_, host) in &self.placed[pod] {
                    per_zone[zone_of[host as usize] as usize] += 1;
                }
                per_zone
            })
            .collect()
    }

    /// Instances of `pod` on host `h` (kept in a dense array for the pod being placed).
    fn count_on(&mut self, pod: usize, h: usize) -> u32 {
        if self.counts_pod != Some(pod) {
            if let Some(old) = self.counts_pod {
                for &(_, host) in &self.placed[old] {
                    self.counts[host as usize] = 0;
                }
            }
            for &(_, host) in &self.placed[pod] {
                self.counts[host as usize] += 1;
            }
            self.counts_pod = Some(pod);
        }
        self.counts[h]
    }

    fn commit(&mut self, inst: Instance, h: usize) {
        let shape = &self.units.shapes[inst.shape];
        self.count_on(inst.pod, h);
        self.counts[h] += 1;
        self.free[h] = self.free[h].saturating_sub(shape.demand);
        self.ports[h].extend(shape.ports.iter().cloned());
        if !self.used[h] {
            self.used[h] = true;
            self.in_use.push(h as u32);
        }
        self.placed[inst.pod].push((inst.replica, h as u32));
    }

    fn run(mut self, observed: &[Observed], changed: &BTreeSet<String>) -> Placement {
        for key in self.units.groups.iter().flat_map(|p| p.spread.iter()) {
            if !self.zones.contains_key(key) {
                let mut ids: BTreeMap<Option<&String>, u32> = BTreeMap::new();
                let zone_of = self
                    .nodes
                    .iter()
                    .map(|n| {
                        let next = ids.len() as u32;
                        *ids.entry(n.labels.get(key)).or_insert(next)
                    })
                    .collect();
                self.zones.insert(key.clone(), (zone_of, ids.len()));
            }
        }
        let mut done: Vec<Vec<bool>> = self
            .units
            .groups
            .iter()
            .map(|p| vec![false; p.replicas as usize + 1])
            .collect();

        // Stickiness: replicas running now stay on their host where every filter still passes.
        let host_index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut pinned: HashSet<(usize, u32)> = HashSet::new();
        let mut sticky: Vec<&Observed> = observed.iter().collect();
        sticky.sort_by_key(|o| (changed.contains(&o.service), *o));
        for Observed {
            service,
            replica,
            host,
        } in sticky
        {
            let (Some(&pod), Some(&h)) = (
                self.units.group_of.get(service),
                host_index.get(host.as_str()),
            ) else {
                continue;
            };
            let p = &self.units.groups[pod];
            if p.global || *replica == 0 || *replica > p.replicas || done[pod][*replica as usize] {
                continue;
            }
            let inst = Instance {
                pod,
                replica: *replica,
                shape: p.shape_of(*replica),
            };
            let shape = &self.units.shapes[inst.shape];
            if self.check(shape, h).is_ok() {
                self.commit(inst, h);
                pinned.insert((pod, *replica));
                done[pod][*replica as usize] = true;
            }
        }

        // Global pods: one instance on every host that passes the host-only stages.
        for pod in 0..self.units.groups.len() {
            if self.units.groups[pod].global {
                self.place_global(pod);
            }
        }

        // Everything else, largest first: by the sum of the shares of the fleet's cpu and memory
        // it needs (measured: ordering by the dominant share instead packs anti-correlated loads
        // about 5% worse).
        let order = self.order;
        let total = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .fold(Amount::default(), |t, n| t.plus(n.allocatable));
        let share = |a: Amount| {
            let c = if total.cpu_millis == 0 {
                0.0
            } else {
                a.cpu_millis as f64 / total.cpu_millis as f64
            };
            let m = if total.memory == 0 {
                0.0
            } else {
                a.memory as f64 / total.memory as f64
            };
            match order {
                Order::SumOfShares => c + m,
                Order::Norm => (c * c + m * m).sqrt(),
            }
        };
        let mut queue: Vec<(f64, Instance)> = Vec::new();
        for (pod, p) in self.units.groups.iter().enumerate() {
            if p.global {
                continue;
            }
            for r in 1..=p.replicas {
                if !done[pod][r as usize] {
                    let shape = p.shape_of(r);
                    queue.push((
                        share(self.units.shapes[shape].demand),
                        Instance {
                            pod,
                            replica: r,
                            shape,
                        },
                    ));
                }
            }
        }
        queue.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.pod.cmp(&b.1.pod))
                .then(a.1.replica.cmp(&b.1.replica))
        });
        // Smallest demand still to come, per dimension: hosts with less free can leave `in_use`.
        let mut least = vec![
            Amount {
                cpu_millis: u64::MAX,
                memory: u64::MAX
            };
            queue.len() + 1
        ];
        for i in (0..queue.len()).rev() {
            let d = self.units.shapes[queue[i].1.shape].demand;
            least[i] = Amount {
                cpu_millis: least[i + 1].cpu_millis.min(d.cpu_millis),
                memory: least[i + 1].memory.min(d.memory),
            };
        }
        let before = (
            self.free.clone(),
            self.ports.clone(),
            self.placed.clone(),
            self.unplaced.len(),
        );
        let mut i = 0;
        while i < queue.len() {
            let mut j = i + 1;
            while j < queue.len() && queue[j].1.shape == queue[i].1.shape {
                j += 1;
            }
            let run: Vec<Instance> = queue[i..j].iter().map(|q| q.1).collect();
            self.prune(least[i]);
            self.place_run(&run);
            i = j;
        }
        // Repair: greedy placement can miss a placement that exists. When something is left over
        // and the problem is small, search for a complete placement exhaustively (within a budget);
        // if one exists it replaces the greedy one. Sticky and global instances stay where they are.
        if self.unplaced.len() > before.3 && queue.len() <= SEARCH_MAX_INSTANCES {
            let (free, ports, placed, unplaced_before) = before;
            let insts: Vec<Instance> = queue.iter().map(|q| q.1).collect();
            let mut state = Search {
                free: free.clone(),
                ports: ports.clone(),
                counts: HashMap::new(),
                budget: SEARCH_BUDGET,
            };
            for (pod, list) in placed.iter().enumerate() {
                for &(r, h) in list {
                    let shape = &self.units.shapes[self.units.groups[pod].shape_of(r)];
                    for service in &shape.services {
                        *state
                            .counts
                            .entry((service.clone(), h as usize))
                            .or_default() += 1;
                    }
                }
            }
            // Try each instance's greedy host first, so the result stays close to the greedy one.
            let greedy: HashMap<(usize, u32), u32> = self
                .placed
                .iter()
                .enumerate()
                .flat_map(|(pod, list)| list.iter().map(move |&(r, h)| ((pod, r), h)))
                .collect();
            let prefer: Vec<Option<usize>> = insts
                .iter()
                .map(|i| greedy.get(&(i.pod, i.replica)).map(|&h| h as usize))
                .collect();
            let mut choice = Vec::with_capacity(insts.len());
            if self.search(&insts, &prefer, &mut state, &mut choice) {
                self.free = free;
                self.ports = ports;
                self.placed = placed;
                self.unplaced.truncate(unplaced_before);
                self.counts.iter_mut().for_each(|c| *c = 0);
                self.counts_pod = None;
                self.zone_counts = (None, Vec::new());
                for (inst, h) in insts.into_iter().zip(choice) {
                    self.commit(inst, h);
                }
            }
        }
        // Consolidation: try to empty the least loaded hosts into the others.
        self.consolidate(&pinned);
        self.finish()
    }

    /// Takes one instance off host `h` (the inverse of [`Engine::commit`]).
    fn uncommit(&mut self, pod: usize, replica: u32, h: usize) {
        let shape = &self.units.shapes[self.units.groups[pod].shape_of(replica)];
        self.free[h] = self.free[h].plus(shape.demand);
        for p in &shape.ports {
            if let Some(i) = self.ports[h].iter().position(|q| q == p) {
                self.ports[h].swap_remove(i);
            }
        }
        if let Some(i) = self.placed[pod]
            .iter()
            .position(|&(r, x)| r == replica && x as usize == h)
        {
            self.placed[pod].remove(i);
        }
        if self.counts_pod == Some(pod) {
            self.counts[h] -= 1;
        }
        self.zone_counts = (None, Vec::new());
    }

    /// Makes room for `inst` on some target host by moving one movable instance off it to another
    /// target (its best-scoring one), for consolidation. Targets and their instances are tried in
    /// order, so the result is deterministic. Returns the host `inst` went to and the swap as
    /// (pod, replica, from, to); on `None` nothing changed.
    fn swap_into(
        &mut self,
        inst: Instance,
        targets: &[usize],
        on_host: &mut [Vec<(usize, u32)>],
        movable: &dyn Fn(usize, u32) -> bool,
        fair: &dyn Fn(u32) -> u32,
        budget: &mut u64,
    ) -> Option<(usize, (usize, u32, usize, usize))> {
        let units = self.units;
        let shape = &units.shapes[inst.shape];
        for &t in targets {
            for yi in 0..on_host[t].len() {
                if *budget == 0 {
                    return None;
                }
                *budget -= 1;
                let (p2, r2) = on_host[t][yi];
                if p2 == inst.pod || !movable(p2, r2) {
                    continue;
                }
                let s2 = units.groups[p2].shape_of(r2);
                let d2 = units.shapes[s2].demand;
                if !shape.demand.fits_in(self.free[t].plus(d2)) {
                    continue;
                }
                self.uncommit(p2, r2, t);
                let even = self.count_on(inst.pod, t) < fair(units.groups[inst.pod].replicas);
                if even && self.check(shape, t).is_ok() {
                    self.commit(inst, t);
                    let shape2 = &units.shapes[s2];
                    let mut best: Option<Scored> = None;
                    for &u in targets {
                        if u == t {
                            continue;
                        }
                        *budget = budget.saturating_sub(1);
                        let even = self.count_on(p2, u) < fair(units.groups[p2].replicas);
                        if even && self.check(shape2, u).is_ok() {
                            let sc = Scored(self.score(shape2, u), Reverse(u as u32));
                            if best.as_ref().is_none_or(|b| sc > *b) {
                                best = Some(sc);
                            }
                        }
                    }
                    if let Some(Scored(_, Reverse(u))) = best {
                        let u = u as usize;
                        self.commit(
                            Instance {
                                pod: p2,
                                replica: r2,
                                shape: s2,
                            },
                            u,
                        );
                        on_host[t].retain(|&x| x != (p2, r2));
                        on_host[u].push((p2, r2));
                        return Some((t, (p2, r2, t, u)));
                    }
                    self.uncommit(inst.pod, inst.replica, t);
                }
                self.commit(
                    Instance {
                        pod: p2,
                        replica: r2,
                        shape: s2,
                    },
                    t,
                );
            }
        }
        None
    }

    /// Consolidation, after the greedy pass: visits hosts from the least loaded up and moves all
    /// of a host's instances to other hosts in use (each to its best-scoring host that passes
    /// every filter, and that does not get more than an even share of the pod's replicas). An
    /// instance that fits nowhere may still move by a swap ([`Engine::swap_into`]): one instance
    /// on a target host moves on to a third host to make room. When they cannot all move, nothing
    /// moves (swaps are undone too). Measured in `benches/placement.rs`: swaps save about one
    /// host in a hundred more. Sticky and global instances and pods with spread
    /// preferences never move, so hosts running them are kept. Bounded by [`CONSOLIDATE_BUDGET`] host checks and by
    /// [`CONSOLIDATE_MISSES`] failures in a row, so large fleets pay little for it.
    fn consolidate(&mut self, pinned: &HashSet<(usize, u32)>) {
        let n = self.nodes.len();
        let mut on_host: Vec<Vec<(usize, u32)>> = vec![Vec::new(); n];
        for (pod, list) in self.placed.iter().enumerate() {
            for &(r, h) in list {
                on_host[h as usize].push((pod, r));
            }
        }
        let units = self.units;
        let movable = |list: &[(usize, u32)]| {
            !list.is_empty()
                && list.iter().all(|&(pod, r)| {
                    let p = &units.groups[pod];
                    !p.global && p.spread.is_empty() && !pinned.contains(&(pod, r))
                })
        };
        let load = |h: usize, free: &[Amount]| {
            let cap = self.nodes[h].allocatable;
            let used = cap.saturating_sub(free[h]);
            let f = |u: u64, c: u64| if c == 0 { 0.0 } else { u as f64 / c as f64 };
            f(used.cpu_millis, cap.cpu_millis) + f(used.memory, cap.memory)
        };
        let movable1 = |pod: usize, r: u32| {
            let p = &units.groups[pod];
            !p.global && p.spread.is_empty() && !pinned.contains(&(pod, r))
        };
        let mut order: Vec<usize> = (0..n).filter(|&h| movable(&on_host[h])).collect();
        order.sort_by(|&a, &b| {
            load(a, &self.free)
                .total_cmp(&load(b, &self.free))
                .then(a.cmp(&b))
        });
        let mut open: Vec<bool> = on_host.iter().map(|l| !l.is_empty()).collect();
        let mut budget = CONSOLIDATE_BUDGET;
        let mut misses = 0;
        for h in order {
            if budget == 0 || misses >= CONSOLIDATE_MISSES {
                break;
            }
            if !movable(&on_host[h]) {
                continue;
            }
            let mut moving = std::mem::take(&mut on_host[h]);
            let size = |&(pod, r): &(usize, u32)| {
                let d = units.shapes[units.groups[pod].shape_of(r)].demand;
                (Reverse(d.cpu_millis + d.memory / (1 << 20)), pod, r)
            };
            moving.sort_by_key(size);
            for &(pod, r) in &moving {
                self.uncommit(pod, r, h);
            }
            open[h] = false;
            let targets: Vec<usize> = (0..n).filter(|&t| open[t]).collect();
            // Moving must not pile up one pod's replicas beyond an even share of the hosts.
            let fair = |replicas: u32| replicas.div_ceil(targets.len().max(1) as u32).max(1);
            let mut moved: Vec<(usize, u32, usize)> = Vec::new();
            // Swaps made to make room: (pod, replica, from, to), undone in reverse on failure.
            let mut swaps: Vec<(usize, u32, usize, usize)> = Vec::new();
            let mut log: Vec<bool> = Vec::new();
            for &(pod, r) in &moving {
                let inst = Instance {
                    pod,
                    replica: r,
                    shape: units.groups[pod].shape_of(r),
                };
                let shape = &units.shapes[inst.shape];
                let mut best: Option<Scored> = None;
                for &t in &targets {
                    budget = budget.saturating_sub(1);
                    let even = self.count_on(pod, t) < fair(units.groups[pod].replicas);
                    if even && self.check(shape, t).is_ok() {
                        let sc = Scored(self.score(shape, t), Reverse(t as u32));
                        if best.as_ref().is_none_or(|b| sc > *b) {
                            best = Some(sc);
                        }
                    }
                }
                match best {
                    Some(Scored(_, Reverse(t))) => {
                        self.commit(inst, t as usize);
                        moved.push((pod, r, t as usize));
                        log.push(false);
                    }
                    // Nowhere to go: make room on a host by moving one of its instances on.
                    None => {
                        match self.swap_into(
                            inst,
                            &targets,
                            &mut on_host,
                            &movable1,
                            &fair,
                            &mut budget,
                        ) {
                            Some((t, y)) => {
                                moved.push((pod, r, t));
                                swaps.push(y);
                                log.push(true);
                            }
                            None => break,
                        }
                    }
                }
            }
            if moved.len() == moving.len() {
                for (pod, r, t) in moved {
                    on_host[t].push((pod, r));
                }
                self.used[h] = false;
                misses = 0;
            } else {
                for is_swap in log.into_iter().rev() {
                    let Some((pod, r, t)) = moved.pop() else {
                        break;
                    };
                    self.uncommit(pod, r, t);
                    if is_swap {
                        if let Some((p2, r2, from, to)) = swaps.pop() {
                            self.uncommit(p2, r2, to);
                            on_host[to].retain(|&x| x != (p2, r2));
                            self.commit(
                                Instance {
                                    pod: p2,
                                    replica: r2,
                                    shape: units.groups[p2].shape_of(r2),
                                },
                                from,
                            );
                            on_host[from].push((p2, r2));
                        }
                    }
                }
                for &(pod, r) in &moving {
                    let shape = units.groups[pod].shape_of(r);
                    self.commit(
                        Instance {
                            pod,
                            replica: r,
                            shape,
                        },
                        h,
                    );
                }
                on_host[h] = moving;
                open[h] = true;
                misses += 1;
            }
        }
    }

    /// Depth-first search for a host for every instance; `choice` gets the hosts in order.
    fn search(
        &self,
        insts: &[Instance],
        prefer: &[Option<usize>],
        st: &mut Search,
        choice: &mut Vec<usize>,
    ) -> bool {
        let k = choice.len();
        let Some(&inst) = insts.get(k) else {
            return true;
        };
        let shape = &self.units.shapes[inst.shape];
        let first = prefer[k];
        let order = first
            .into_iter()
            .chain((0..self.nodes.len()).filter(|&h| Some(h) != first));
        for h in order {
            if st.budget == 0 {
                return false;
            }
            st.budget -= 1;
            let node = &self.nodes[h];
            let fits = filter::host_ready(node).is_ok()
                && filter::constraints(shape, node).is_ok()
                && filter::max_per_node(shape, |service| {
                    st.counts
                        .get(&(service.to_string(), h))
                        .copied()
                        .unwrap_or(0)
                })
                .is_ok()
                && filter::ports(shape, &st.ports[h]).is_ok()
                && filter::memory(shape.demand, st.free[h]).is_ok()
                && filter::cpu(shape.demand, st.free[h]).is_ok();
            if !fits {
                continue;
            }
            let before = st.free[h];
            st.free[h] = before.saturating_sub(shape.demand);
            st.ports[h].extend(shape.ports.iter().cloned());
            for service in &shape.services {
                *st.counts.entry((service.clone(), h)).or_default() += 1;
            }
            choice.push(h);
            if self.search(insts, prefer, st, choice) {
                return true;
            }
            choice.pop();
            for service in &shape.services {
                *st.counts.entry((service.clone(), h)).or_default() -= 1;
            }
            let n = st.ports[h].len() - shape.ports.len();
            st.ports[h].truncate(n);
            st.free[h] = before;
        }
        false
    }

    /// Drops from `in_use` the hosts that can no longer take even the smallest demand to come.
    fn prune(&mut self, least: Amount) {
        let free = &self.free;
        self.in_use.retain(|&h| least.fits_in(free[h as usize]));
    }

    /// Stages 1–2 for a shape, computed once.
    fn eligible(&mut self, s: usize) -> Eligible {
        if let Some(e) = &self.eligible[s] {
            return e.clone();
        }
        let shape = &self.units.shapes[s];
        let by_host = shape
            .constraints
            .iter()
            .any(|c| c.attribute == units::Attribute::Hostname);
        let ok = |n: &Node| filter::host_ready(n).is_ok() && filter::constraints(shape, n).is_ok();
        let e = if by_host {
            Eligible::Hosts(
                (0..self.nodes.len() as u32)
                    .filter(|&h| ok(&self.nodes[h as usize]))
                    .collect(),
            )
        } else {
            Eligible::Classes(
                self.class_hosts
                    .iter()
                    .map(|hosts| ok(&self.nodes[hosts[0] as usize]))
                    .collect(),
            )
        };
        self.eligible[s] = Some(e.clone());
        e
    }

    /// The first still-empty host of a class, if any.
    fn first_empty(&mut self, class: usize) -> Option<u32> {
        let hosts = &self.class_hosts[class];
        let cur = &mut self.class_cursor[class];
        while *cur < hosts.len() && self.used[hosts[*cur] as usize] {
            *cur += 1;
        }
        hosts.get(*cur).copied()
    }

    /// Select: places consecutive instances of one shape, each on the best-scoring host.
    fn place_run(&mut self, run: &[Instance]) {
        let units = self.units;
        let shape = &units.shapes[run[0].shape];
        let eligible = self.eligible(run[0].shape);
        let zoned = !units.groups[shape.group].spread.is_empty();
        let mut heap: BinaryHeap<Scored> = BinaryHeap::new();
        let mut first = true;
        for &inst in run {
            // Zone spreading changes the score of every host in a zone: gather afresh each time.
            if first || zoned {
                heap.clear();
                for h in self.candidates(&eligible) {
                    self.consider(shape, h as usize, &mut heap);
                }
                first = false;
            }
            let Some(Scored(_, Reverse(h))) = heap.pop() else {
                self.explain(inst);
                continue;
            };
            let h = h as usize;
            let was_empty = !self.used[h];
            self.commit(inst, h);
            if !zoned {
                // Only host h changed: score it again, and let its class offer its next empty host.
                self.consider(shape, h, &mut heap);
                if was_empty && matches!(eligible, Eligible::Classes(_)) {
                    if let Some(next) = self.first_empty(self.class_of[h] as usize) {
                        self.consider(shape, next as usize, &mut heap);
                    }
                }
            }
        }
    }

    fn candidates(&mut self, eligible: &Eligible) -> Vec<u32> {
        match eligible {
            Eligible::Hosts(hosts) => hosts.clone(),
            Eligible::Classes(ok) => {
                let mut out: Vec<u32> = self
                    .in_use
                    .iter()
                    .copied()
                    .filter(|&h| ok[self.class_of[h as usize] as usize])
                    .collect();
                for (c, &ok) in ok.iter().enumerate() {
                    if ok {
                        if let Some(h) = self.first_empty(c) {
                            out.push(h);
                        }
                    }
                }
                out
            }
        }
    }

    fn consider(&mut self, shape: &Shape, h: usize, heap: &mut BinaryHeap<Scored>) {
        if self.check_dynamic(shape, h).is_ok() {
            let s = self.score(shape, h);
            heap.push(Scored(s, Reverse(h as u32)));
        }
    }

    fn place_global(&mut self, pod: usize) {
        let shape_index = self.units.groups[pod].shape_of(1);
        let shape = &self.units.shapes[shape_index];
        let eligible: Vec<usize> = (0..self.nodes.len())
            .filter(|&h| {
                filter::host_ready(&self.nodes[h]).is_ok()
                    && filter::constraints(shape, &self.nodes[h]).is_ok()
            })
            .collect();
        let of = eligible.len() as u32;
        for (k, &h) in eligible.iter().enumerate() {
            let inst = Instance {
                pod,
                replica: k as u32 + 1,
                shape: shape_index,
            };
            match self.check_dynamic(shape, h) {
                Ok(()) => self.commit(inst, h),
                Err(why) => {
                    let p = &self.units.groups[pod];
                    let mut hist = Histogram::default();
                    hist.add(&why);
                    self.unplaced.push(Unplaced {
                        group: p.name.clone(),
                        services: shape.services.clone(),
                        replica: inst.replica,
                        of,
                        global: true,
                        hosts: 1,
                        reasons: vec![format!(
                            "{}: {}",
                            self.nodes[h].name,
                            hist.render(shape).join(", ")
                        )],
                    });
                }
            }
        }
    }

    /// Every host through the whole pipeline, to say why none fits.
    fn explain(&mut self, inst: Instance) {
        let shape = &self.units.shapes[inst.shape];
        let mut hist = Histogram::default();
        for h in 0..self.nodes.len() {
            if let Err(why) = self.check(shape, h) {
                hist.add(&why);
            }
        }
        let p = &self.units.groups[inst.pod];
        self.unplaced.push(Unplaced {
            group: p.name.clone(),
            services: shape.services.clone(),
            replica: inst.replica,
            of: p.replicas,
            global: false,
            hosts: self.nodes.len(),
            reasons: hist.render(shape),
        });
    }

    fn finish(self) -> Placement {
        let mut assignments = Vec::new();
        let mut per_host: Vec<Vec<(String, u32)>> = vec![Vec::new(); self.nodes.len()];
        for (pod, placed) in self.placed.iter().enumerate() {
            let p = &self.units.groups[pod];
            for &(replica, h) in placed {
                let shape = &self.units.shapes[p.shape_of(replica)];
                for service in &shape.services {
                    assignments.push(Assignment {
                        service: service.clone(),
                        replica,
                        host: self.nodes[h as usize].name.clone(),
                        pod: p.pod_of(service).unwrap_or(&p.name).to_string(),
                    });
                    per_host[h as usize].push((service.clone(), replica));
                }
            }
        }
        assignments.sort();
        let mut unschedulable = self.unplaced;
        unschedulable.sort_by(|a, b| a.group.cmp(&b.group).then(a.replica.cmp(&b.replica)));
        let hosts = self
            .nodes
            .iter()
            .zip(per_host)
            .zip(self.ports)
            .zip(&self.free)
            .map(|(((n, mut replicas), mut ports), free)| {
                replicas.sort();
                ports.sort();
                HostUse {
                    name: n.name.clone(),
                    state: n.state,
                    allocatable: n.allocatable,
                    used: n.allocatable.saturating_sub(*free),
                    ports,
                    replicas,
                }
            })
            .collect();
        Placement {
            assignments,
            unschedulable,
            hosts,
        }
    }
}

/// Exhaustive repair runs only on problems this small, and gives up after this many host checks.
const SEARCH_MAX_INSTANCES: usize = 64;
const SEARCH_BUDGET: u64 = 200_000;

/// Consolidation gives up after this many host checks, or this many hosts in a row it could not
/// empty.
const CONSOLIDATE_BUDGET: u64 = 1_000_000;
const CONSOLIDATE_MISSES: usize = 8;

/// The state an exhaustive search changes and undoes.
struct Search {
    free: Vec<Amount>,
    ports: Vec<Vec<PortKey>>,
    /// Replicas per (service, host).
    counts: HashMap<(String, usize), u32>,
    budget: u64,
}

/// Rejections counted by reason, for one pod instance.
#[derive(Default)]
struct Histogram {
    counts: BTreeMap<Reject, usize>,
    memory: (usize, u64),
    cpu: (usize, u64),
}

impl Histogram {
    fn add(&mut self, why: &Reject) {
        match why {
            Reject::Memory { free } => {
                self.memory.0 += 1;
                self.memory.1 = self.memory.1.max(*free);
            }
            Reject::Cpu { free } => {
                self.cpu.0 += 1;
                self.cpu.1 = self.cpu.1.max(*free);
            }
            other => *self.counts.entry(other.clone()).or_default() += 1,
        }
    }

    /// Lines such as `3 lack memory (needs 4 GiB, most free 2.5 GiB)`, most common first.
    fn render(&self, shape: &Shape) -> Vec<String> {
        let mut lines: Vec<(usize, usize, String)> = Vec::new();
        for (i, (why, n)) in self.counts.iter().enumerate() {
            let n = *n;
            let (is, has, does) = if n == 1 {
                ("is", "has", "does")
            } else {
                ("are", "have", "do")
            };
            let text = match why {
                Reject::Draining => format!("{n} {is} draining"),
                Reject::Unreachable => format!("{n} {is} unreachable"),
                Reject::Constraint(c) => format!("{n} {does} not match `{c}`"),
                Reject::MaxPerNode(m) => {
                    format!("{n} already run {m} (max_replicas_per_node: {m})")
                }
                Reject::OwnPorts(p) => format!("{n} cannot run it: its services publish {p} twice"),
                Reject::Port(p) => format!("{n} {has} {p} taken"),
                Reject::Memory { .. } | Reject::Cpu { .. } => continue,
            };
            lines.push((n, i, text));
        }
        let lack = if self.memory.0 == 1 { "lacks" } else { "lack" };
        if self.memory.0 > 0 {
            lines.push((
                self.memory.0,
                usize::MAX - 1,
                format!(
                    "{} {lack} memory (needs {}, most free {})",
                    self.memory.0,
                    format_bytes(shape.demand.memory),
                    format_bytes(self.memory.1)
                ),
            ));
        }
        let lack = if self.cpu.0 == 1 { "lacks" } else { "lack" };
        if self.cpu.0 > 0 {
            lines.push((
                self.cpu.0,
                usize::MAX,
                format!(
                    "{} {lack} cpu (needs {}, most free {})",
                    self.cpu.0,
                    format_cpus(shape.demand.cpu_millis),
                    format_cpus(self.cpu.1)
                ),
            ));
        }
        if lines.is_empty() {
            return vec!["the inventory has no hosts".into()];
        }
        lines.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        lines.into_iter().map(|l| l.2).collect()
    }
}
