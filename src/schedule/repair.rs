//! Stage 5, repair: greedy placement can miss a placement that exists. When it left something
//! unplaced and the problem is small, a bounded depth-first search looks for a complete placement;
//! if it finds one, that replaces the greedy one. Sticky and global instances stay where they are.

use std::collections::HashMap;

use super::engine::{Engine, Instance, Placed};
use super::filter;
use super::order::Queue;
use super::units::{Amount, PortKey};

/// Exhaustive repair runs only on problems this small, and gives up after this many host checks.
const SEARCH_MAX_INSTANCES: usize = 64;
const SEARCH_BUDGET: u64 = 200_000;

/// The state an exhaustive search changes and undoes.
struct Search {
    free: Vec<Amount>,
    ports: Vec<Vec<PortKey>>,
    /// Replicas per (service, host).
    counts: HashMap<(String, usize), u32>,
    budget: u64,
}

/// The engine's state before the greedy pass, to start the search from.
pub(super) struct Snapshot {
    free: Vec<Amount>,
    ports: Vec<Vec<PortKey>>,
    placed: Vec<Placed>,
    unplaced: usize,
}

impl Engine<'_> {
    /// What the greedy pass may change.
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            free: self.free.clone(),
            ports: self.ports.clone(),
            placed: self.placed.clone(),
            unplaced: self.unplaced.len(),
        }
    }

    /// Searches for a complete placement of `queue` from `before` when the greedy pass left
    /// something unplaced on a small problem.
    pub(super) fn repair(&mut self, queue: &Queue, before: Snapshot) {
        if self.unplaced.len() <= before.unplaced || queue.len > SEARCH_MAX_INSTANCES {
            return;
        }
        let Snapshot {
            free,
            ports,
            placed,
            unplaced: unplaced_before,
        } = before;
        let insts: Vec<Instance> = queue.instances().collect();
        let mut state = Search {
            free: free.clone(),
            ports: ports.clone(),
            counts: HashMap::new(),
            budget: SEARCH_BUDGET,
        };
        for (pod, list) in placed.iter().enumerate() {
            for (r, h) in list.iter() {
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
            .flat_map(|(pod, list)| list.iter().map(move |(r, h)| ((pod, r), h)))
            .collect();
        let prefer: Vec<Option<usize>> = insts
            .iter()
            .map(|i| greedy.get(&(i.group, i.replica)).map(|&h| h as usize))
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
}
