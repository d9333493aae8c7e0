//! Stage 6, consolidation: after the greedy pass, try to empty the least loaded hosts into the
//! others, moving an instance by a swap when it fits nowhere directly. Bounded, so large fleets
//! pay little for it; measured, it saves one to three hosts in a hundred.

use std::cmp::Reverse;
use std::collections::HashSet;

use super::engine::{Engine, Instance, Scored};
use super::units::Amount;

/// Consolidation gives up after this many host checks, or this many hosts in a row it could not
/// empty.
const CONSOLIDATE_BUDGET: u64 = 1_000_000;
const CONSOLIDATE_MISSES: usize = 8;

impl Engine<'_> {
    /// Makes room for `inst` on some target host by moving one movable instance off it to another
    /// target (its best-scoring one), for consolidation. Targets and their instances are tried in
    /// order, so the result is deterministic. Returns the host `inst` went to and the swap as
    /// (pod, replica, from, to); on `None` nothing changed.
    pub(super) fn swap_into(
        &mut self,
        inst: Instance,
        targets: &[usize],
        on_host: &mut [Vec<(u32, u32)>],
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
                let p2 = p2 as usize;
                if p2 == inst.group || !movable(p2, r2) {
                    continue;
                }
                let s2 = units.groups[p2].shape_of(r2);
                let d2 = units.shapes[s2].demand;
                if !shape.demand.fits_in(self.free[t].plus(d2)) {
                    continue;
                }
                self.uncommit(p2, r2, t);
                let even = self.count_on(inst.group, t) < fair(units.groups[inst.group].replicas);
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
                                group: p2,
                                replica: r2,
                                shape: s2,
                            },
                            u,
                        );
                        on_host[t].retain(|&x| x != (p2 as u32, r2));
                        on_host[u].push((p2 as u32, r2));
                        return Some((t, (p2, r2, t, u)));
                    }
                    self.uncommit(inst.group, inst.replica, t);
                }
                self.commit(
                    Instance {
                        group: p2,
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
    pub(super) fn consolidate(&mut self, pinned: &HashSet<(usize, u32)>) {
        let n = self.nodes.len();
        // With fewer than two hosts in use no host has another to empty into (every attempt
        // below would be a miss): skip building the per-instance lists, which would cost memory
        // per replica (16 MiB for a million replicas on one host).
        if self.used.iter().filter(|&&u| u).count() < 2 {
            return;
        }
        // (pod, replica) per host, as u32 pairs: 8 bytes per instance rather than 16.
        let mut on_host: Vec<Vec<(u32, u32)>> = vec![Vec::new(); n];
        for (pod, list) in self.placed.iter().enumerate() {
            for (r, h) in list.iter() {
                on_host[h as usize].push((pod as u32, r));
            }
        }
        let units = self.units;
        let movable = |list: &[(u32, u32)]| {
            !list.is_empty()
                && list.iter().all(|&(pod, r)| {
                    let pod = pod as usize;
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
            // An attempt checks every instance against every other open host: with none, or more
            // checks than a whole budget, it cannot succeed, and taking a host of a million
            // instances off only to put them back would cost more than all of placement.
            let others = (0..n).filter(|&t| open[t] && t != h).count() as u64;
            if others == 0 || on_host[h].len() as u64 * others > CONSOLIDATE_BUDGET {
                misses += 1;
                continue;
            }
            let mut moving = std::mem::take(&mut on_host[h]);
            let size = |&(pod, r): &(u32, u32)| {
                let d = units.shapes[units.groups[pod as usize].shape_of(r)].demand;
                (Reverse(d.cpu_millis + d.memory / (1 << 20)), pod, r)
            };
            moving.sort_by_key(size);
            // `moving` is everything on `h` (movable hosts run nothing pinned or global).
            self.uncommit_all(h, &moving);
            open[h] = false;
            let targets: Vec<usize> = (0..n).filter(|&t| open[t]).collect();
            // Moving must not pile up one pod's replicas beyond an even share of the hosts.
            let fair = |replicas: u32| replicas.div_ceil(targets.len().max(1) as u32).max(1);
            let mut moved: Vec<(usize, u32, usize)> = Vec::new();
            // Swaps made to make room: (pod, replica, from, to), undone in reverse on failure.
            let mut swaps: Vec<(usize, u32, usize, usize)> = Vec::new();
            let mut log: Vec<bool> = Vec::new();
            for &(pod, r) in &moving {
                let pod = pod as usize;
                let inst = Instance {
                    group: pod,
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
                    on_host[t].push((pod as u32, r));
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
                            on_host[to].retain(|&x| x != (p2 as u32, r2));
                            self.commit(
                                Instance {
                                    group: p2,
                                    replica: r2,
                                    shape: units.groups[p2].shape_of(r2),
                                },
                                from,
                            );
                            on_host[from].push((p2 as u32, r2));
                        }
                    }
                }
                for &(pod, r) in &moving {
                    let pod = pod as usize;
                    let shape = units.groups[pod].shape_of(r);
                    self.commit(
                        Instance {
                            group: pod,
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
}
