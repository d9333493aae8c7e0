//! Stage 4, select: each instance of the queue goes to the host that passes every filter with
//! the best score, ties to the first host in inventory order. Of the empty hosts of a class only
//! the first is a candidate (they would score the same), and consecutive instances of one shape
//! keep their candidates in a heap, since placing one instance changes only the host it went to.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::engine::{Eligible, Engine, Instance, Scored};
use super::filter;
use super::order::Queue;
use super::units::{self, Amount, Shape};
use super::Node;

impl Engine<'_> {
    /// Places the queue greedily, one stretch of same-shape runs at a time.
    pub(super) fn place_greedy(&mut self, queue: &Queue) {
        let runs = &queue.runs;
        let mut i = 0;
        while i < runs.len() {
            let mut j = i + 1;
            while j < runs.len() && runs[j].shape == runs[i].shape {
                j += 1;
            }
            self.prune(queue.least[i]);
            self.place_run(runs[i].shape, runs[i..j].iter().flat_map(|r| r.instances()));
            i = j;
        }
    }

    pub(super) fn prune(&mut self, least: Amount) {
        let free = &self.free;
        self.in_use.retain(|&h| least.fits_in(free[h as usize]));
    }

    /// Stages 1–2 for a shape, computed once.
    pub(super) fn eligible(&mut self, s: usize) -> Eligible {
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
    pub(super) fn first_empty(&mut self, class: usize) -> Option<u32> {
        let hosts = &self.class_hosts[class];
        let cur = &mut self.class_cursor[class];
        while *cur < hosts.len() && self.used[hosts[*cur] as usize] {
            *cur += 1;
        }
        hosts.get(*cur).copied()
    }

    /// Select: places consecutive instances of one shape, each on the best-scoring host.
    pub(super) fn place_run(&mut self, shape: usize, run: impl Iterator<Item = Instance>) {
        let units = self.units;
        let eligible = self.eligible(shape);
        let shape = &units.shapes[shape];
        let zoned = !units.groups[shape.group].spread.is_empty();
        let mut heap: BinaryHeap<Scored> = BinaryHeap::new();
        let mut first = true;
        for inst in run {
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

    pub(super) fn candidates(&mut self, eligible: &Eligible) -> Vec<u32> {
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

    pub(super) fn consider(&mut self, shape: &Shape, h: usize, heap: &mut BinaryHeap<Scored>) {
        if self.check_dynamic(shape, h).is_ok() {
            let s = self.score(shape, h);
            heap.push(Scored(s, Reverse(h as u32)));
        }
    }
}
