//! The placement engine's state: free capacity, ports and instances per host, host classes,
//! and the two per-host pipelines every stage calls — the filters ([`Engine::check`]) and the
//! scorers ([`Engine::score`]) — with the bookkeeping of placing and unplacing one instance.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use super::filter::{self, Reject};
use super::order::Order;
use super::score;
use super::units::{Amount, PortKey, Shape, Units};
use super::{Assignment, HostUse, Node, NodeState, Placement, Unplaced};

/// One instance of a group waiting for a host: replica `replica` of each of its services.
#[derive(Debug, Clone, Copy)]
pub(super) struct Instance {
    /// Index into [`Units::groups`].
    pub(super) group: usize,
    pub(super) replica: u32,
    pub(super) shape: usize,
}

/// The instances of one group placed so far, by host: each host's replica numbers. Counting a group's instances on a host, or taking one off, costs the
/// host's share rather than a scan of every replica of the group.
#[derive(Debug, Clone, Default)]
pub(super) struct Placed {
    by_host: BTreeMap<u32, Vec<u32>>,
    len: usize,
}

impl Placed {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, replica: u32, host: u32) {
        self.by_host.entry(host).or_default().push(replica);
        self.len += 1;
    }

    /// Takes `replica` off `host`; whether it was there.
    pub(super) fn remove(&mut self, replica: u32, host: u32) -> bool {
        let Some(list) = self.by_host.get_mut(&host) else {
            return false;
        };
        // From the end: what is taken off again is mostly what was just placed (an undo).
        let Some(i) = list.iter().rposition(|&r| r == replica) else {
            return false;
        };
        // Order within a host does not matter (every reader counts or sorts), and shifting the
        // rest would make emptying a host of k instances cost k² (measured: 98% of placing 10^6
        // replicas).
        list.swap_remove(i);
        if list.is_empty() {
            self.by_host.remove(&host);
        }
        self.len -= 1;
        true
    }

    /// Takes every instance off `host`.
    pub(super) fn take(&mut self, host: u32) {
        if let Some(list) = self.by_host.remove(&host) {
            self.len -= list.len();
        }
    }

    /// Every (replica, host), host by host.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.by_host
            .iter()
            .flat_map(|(&h, list)| list.iter().map(move |&r| (r, h)))
    }

    /// Each host with how many instances it runs.
    pub(super) fn hosts(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.by_host.iter().map(|(&h, list)| (h, list.len() as u32))
    }

    /// Every instance as runs of consecutive replicas on one host: (first, last, host), by first
    /// replica. Sorts each host's list in place, so it needs no memory per instance.
    pub(super) fn into_runs(self) -> Vec<(u32, u32, u32)> {
        let mut runs = Vec::new();
        for (h, mut list) in self.by_host {
            list.sort_unstable();
            let mut it = list.into_iter();
            let Some(mut first) = it.next() else {
                continue;
            };
            let mut last = first;
            for r in it {
                if r != last + 1 {
                    runs.push((first, last, h));
                    first = r;
                }
                last = r;
            }
            runs.push((first, last, h));
        }
        runs.sort_unstable();
        runs
    }

    /// The replicas on `host`.
    pub(super) fn on(&self, host: u32) -> &[u32] {
        self.by_host.get(&host).map_or(&[], Vec::as_slice)
    }
}

/// Where a shape may go before anything is placed (filters 1 and 2, which depend only on the
/// host).
#[derive(Debug, Clone)]
pub(super) enum Eligible {
    /// Per class: whether its hosts pass. Used when no constraint names a host.
    Classes(Vec<bool>),
    /// The hosts that pass, in order (a `node.hostname` constraint makes classes useless).
    Hosts(Vec<u32>),
}

pub(crate) struct Engine<'a> {
    pub(super) units: &'a Units,
    pub(super) nodes: &'a [Node],
    pub(super) free: Vec<Amount>,
    pub(super) ports: Vec<Vec<PortKey>>,
    /// Whether anything was placed on the host.
    pub(super) used: Vec<bool>,
    /// Hosts in use that may still take something.
    pub(super) in_use: Vec<u32>,
    pub(super) class_of: Vec<u32>,
    pub(super) class_hosts: Vec<Vec<u32>>,
    /// Per class: index into `class_hosts` of its first host that may still be empty.
    pub(super) class_cursor: Vec<usize>,
    /// Host size relative to the largest, for opening the largest empty host first.
    pub(super) size: Vec<f64>,
    pub(super) eligible: Vec<Option<Eligible>>,
    /// (replica, host) placed so far, per pod.
    pub(super) placed: Vec<Placed>,
    /// Instances of `counts_pod` on each host.
    pub(super) counts: Vec<u32>,
    pub(super) counts_pod: Option<usize>,
    /// Per spread label: each host's group, and the group count.
    pub(super) zones: HashMap<String, (Vec<u32>, usize)>,
    /// Per-group counts of (pod, instances placed), for the spread-preference scorer.
    pub(super) zone_counts: (Option<(usize, usize)>, Vec<Vec<u32>>),
    pub(super) unplaced: Vec<Unplaced>,
    pub(super) order: Order,
}

/// A host's score, ties broken towards the first host in inventory order.
#[derive(PartialEq)]
pub(super) struct Scored(pub(super) f64, pub(super) Reverse<u32>);

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
    pub(super) fn new(units: &'a Units, nodes: &'a [Node], order: Order) -> Self {
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
            placed: vec![Placed::default(); units.groups.len()],
            counts: vec![0; nodes.len()],
            counts_pod: None,
            zones: HashMap::new(),
            zone_counts: (None, Vec::new()),
            unplaced: Vec::new(),
            order,
        }
    }

    /// Groups hosts by the value of every label a group spreads over, for the zone scorer.
    pub(super) fn index_zones(&mut self) {
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
    }

    /// The filter pipeline for one host: the first stage that rejects gives the reason.
    pub(super) fn check(&mut self, shape: &Shape, h: usize) -> Result<(), Reject> {
        let node = &self.nodes[h];
        // 1. Host state: draining and unreachable hosts take nothing new.
        filter::host_ready(node)?;
        // 2. Constraints (node.hostname, node.labels.*, node.platform.*; `platform:`).
        filter::constraints(shape, node)?;
        self.check_dynamic(shape, h)
    }

    /// Stages 3–6: the ones that change as instances are placed.
    pub(super) fn check_dynamic(&mut self, shape: &Shape, h: usize) -> Result<(), Reject> {
        // 3. max_replicas_per_node: instances of this pod already here.
        if !shape.limits.is_empty() {
            let on_pod = self.count_on(shape.group, h);
            let pod = &self.units.groups[shape.group];
            let uniform = pod.uniform();
            let placed = &self.placed[shape.group];
            let shapes = &self.units.shapes;
            // Every instance runs every service unless the pod's services differ in replicas.
            filter::max_per_node(shape, |service| {
                if uniform {
                    on_pod
                } else {
                    placed
                        .on(h as u32)
                        .iter()
                        .filter(|&&r| {
                            shapes[pod.shape_of(r)]
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
    pub(super) fn score(&mut self, shape: &Shape, h: usize) -> f64 {
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
    pub(super) fn count_zones(&self, pod: usize) -> Vec<Vec<u32>> {
        self.units.groups[pod]
            .spread
            .iter()
            .map(|key| {
                let (zone_of, zones) = &self.zones[key];
                let mut per_zone = vec![0u32; *zones];
                for (host, n) in self.placed[pod].hosts() {
                    per_zone[zone_of[host as usize] as usize] += n;
                }
                per_zone
            })
            .collect()
    }

    /// Instances of `pod` on host `h` (kept in a dense array for the pod being placed).
    pub(super) fn count_on(&mut self, pod: usize, h: usize) -> u32 {
        if self.counts_pod != Some(pod) {
            if let Some(old) = self.counts_pod {
                for (host, _) in self.placed[old].hosts() {
                    self.counts[host as usize] = 0;
                }
            }
            for (host, n) in self.placed[pod].hosts() {
                self.counts[host as usize] += n;
            }
            self.counts_pod = Some(pod);
        }
        self.counts[h]
    }

    pub(super) fn commit(&mut self, inst: Instance, h: usize) {
        let shape = &self.units.shapes[inst.shape];
        self.count_on(inst.group, h);
        self.counts[h] += 1;
        self.free[h] = self.free[h].saturating_sub(shape.demand);
        self.ports[h].extend(shape.ports.iter().cloned());
        if !self.used[h] {
            self.used[h] = true;
            self.in_use.push(h as u32);
        }
        self.placed[inst.group].push(inst.replica, h as u32);
    }

    /// Takes one instance off host `h` (the inverse of [`Engine::commit`]).
    pub(super) fn uncommit(&mut self, pod: usize, replica: u32, h: usize) {
        self.release(pod, replica, h);
        self.placed[pod].remove(replica, h as u32);
    }

    /// Takes every one of `instances` (all that run on `h`) off host `h` at once: the cost of the
    /// host's share, however many it runs.
    pub(super) fn uncommit_all(&mut self, h: usize, instances: &[(u32, u32)]) {
        for &(pod, replica) in instances {
            self.release(pod as usize, replica, h);
        }
        for &(pod, _) in instances {
            self.placed[pod as usize].take(h as u32);
        }
    }

    /// What [`Engine::uncommit`] gives back to the host, but the record of the instance.
    fn release(&mut self, pod: usize, replica: u32, h: usize) {
        let shape = &self.units.shapes[self.units.groups[pod].shape_of(replica)];
        self.free[h] = self.free[h].plus(shape.demand);
        for p in &shape.ports {
            if let Some(i) = self.ports[h].iter().position(|q| q == p) {
                self.ports[h].swap_remove(i);
            }
        }
        if self.counts_pod == Some(pod) {
            self.counts[h] -= 1;
        }
        self.zone_counts = (None, Vec::new());
    }

    /// The result. Each group's instances become runs of consecutive replicas per host, so the
    /// result costs memory per run (about one per host a service uses), not per replica.
    pub(super) fn finish(self) -> Placement {
        let mut assignments = Vec::new();
        for (pod, placed) in self.placed.into_iter().enumerate() {
            let p = &self.units.groups[pod];
            for (first, last, h) in placed.into_runs() {
                // A run can span instances of different shapes (services with fewer replicas
                // than their pod): split it where the shape changes.
                let mut from = first;
                while from <= last {
                    let shape_index = p.shape_of(from);
                    let next = p.shape_runs.partition_point(|&(f, _)| f <= from);
                    let to = p
                        .shape_runs
                        .get(next)
                        .map_or(last, |&(f, _)| f.saturating_sub(1).min(last));
                    for service in &self.units.shapes[shape_index].services {
                        assignments.push(Assignment {
                            service: service.clone(),
                            first: from,
                            last: to,
                            host: self.nodes[h as usize].name.clone(),
                            pod: p.pod_of(service).unwrap_or(&p.name).to_string(),
                        });
                    }
                    if to == u32::MAX {
                        break;
                    }
                    from = to + 1;
                }
            }
        }
        assignments.sort_by(|a, b| a.service.cmp(&b.service).then(a.first.cmp(&b.first)));
        // Runs split at a shape boundary join again where the service stays on the host.
        let mut merged: Vec<Assignment> = Vec::with_capacity(assignments.len());
        for a in assignments {
            match merged.last_mut() {
                Some(m)
                    if m.service == a.service
                        && m.host == a.host
                        && m.last.checked_add(1) == Some(a.first) =>
                {
                    m.last = a.last;
                }
                _ => merged.push(a),
            }
        }
        let assignments = merged;
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut per_host: Vec<Vec<(String, RangeInclusive<u32>)>> =
            vec![Vec::new(); self.nodes.len()];
        // In (service, first) order already, as each host's list must be.
        for a in &assignments {
            if let Some(&h) = index.get(a.host.as_str()) {
                per_host[h].push((a.service.clone(), a.replicas()));
            }
        }
        let mut unschedulable = self.unplaced;
        unschedulable.sort_by(|a, b| a.group.cmp(&b.group).then(a.replica.cmp(&b.replica)));
        let hosts = self
            .nodes
            .iter()
            .zip(per_host)
            .zip(self.ports)
            .zip(&self.free)
            .map(|(((n, replicas), mut ports), free)| {
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
