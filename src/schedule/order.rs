//! Stage 3, order: the instances left after stickiness and global groups, largest first, as
//! runs of consecutive instances of one shape (the select stage places a run with one heap).

use std::collections::{BTreeMap, HashSet};

use super::engine::{Engine, Instance};
use super::units::Amount;
use super::NodeState;

/// How the greedy pass orders the instances it places, largest first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Order {
    /// The sum of the instance's shares of the fleet's cpu and memory.
    SumOfShares,
    /// The L2 norm of the two shares.
    Norm,
}

/// A run of consecutive replicas of one group that have the same shape: `first..=last`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub(super) group: usize,
    pub(super) first: u32,
    pub(super) last: u32,
    pub(super) shape: usize,
}

impl Run {
    pub(super) fn instances(self) -> impl Iterator<Item = Instance> {
        (self.first..=self.last).map(move |replica| Instance {
            group: self.group,
            replica,
            shape: self.shape,
        })
    }

    fn len(&self) -> usize {
        (self.last - self.first) as usize + 1
    }
}

/// The instances to place greedily, in order, as runs: a service of a million identical replicas
/// is one run, not a million entries. For each run, the smallest demand still to come from there
/// on (per dimension): hosts with less free can leave the candidates.
pub(super) struct Queue {
    pub(super) runs: Vec<Run>,
    pub(super) least: Vec<Amount>,
    /// Instances in all.
    pub(super) len: usize,
}

impl Queue {
    /// Every instance, in order.
    pub(super) fn instances(&self) -> impl Iterator<Item = Instance> + '_ {
        self.runs.iter().flat_map(|r| r.instances())
    }
}

impl Engine<'_> {
    /// Everything not placed yet (`pinned` is), largest first: by the sum of the shares of the
    /// fleet's cpu and memory it needs (measured: ordering by the dominant share instead packs
    /// anti-correlated loads about 5% worse), ties by group and replica.
    pub(super) fn queue(&self, pinned: &HashSet<(usize, u32)>) -> Queue {
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
        let mut pinned_of: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for &(group, replica) in pinned {
            pinned_of.entry(group).or_default().push(replica);
        }
        let mut runs: Vec<(f64, Run)> = Vec::new();
        for (group, p) in self.units.groups.iter().enumerate() {
            if p.global || p.replicas == 0 {
                continue;
            }
            let mut skip = pinned_of.remove(&group).unwrap_or_default();
            skip.sort_unstable();
            for (k, &(first, shape)) in p.shape_runs.iter().enumerate() {
                let last = p
                    .shape_runs
                    .get(k + 1)
                    .map_or(p.replicas, |&(next, _)| next - 1)
                    .min(p.replicas);
                let share = share(self.units.shapes[shape].demand);
                // The run, less the pinned replicas in it.
                let mut from = first;
                let inside = skip.iter().copied().filter(|&r| r >= first && r <= last);
                for r in inside.chain(std::iter::once(last + 1)) {
                    if r > from {
                        runs.push((
                            share,
                            Run {
                                group,
                                first: from,
                                last: r - 1,
                                shape,
                            },
                        ));
                    }
                    from = r + 1;
                }
            }
        }
        runs.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.group.cmp(&b.1.group))
                .then(a.1.first.cmp(&b.1.first))
        });
        let mut least = vec![
            Amount {
                cpu_millis: u64::MAX,
                memory: u64::MAX
            };
            runs.len() + 1
        ];
        for i in (0..runs.len()).rev() {
            let d = self.units.shapes[runs[i].1.shape].demand;
            least[i] = Amount {
                cpu_millis: least[i + 1].cpu_millis.min(d.cpu_millis),
                memory: least[i + 1].memory.min(d.memory),
            };
        }
        Queue {
            len: runs.iter().map(|r| r.1.len()).sum(),
            runs: runs.into_iter().map(|r| r.1).collect(),
            least,
        }
    }
}
