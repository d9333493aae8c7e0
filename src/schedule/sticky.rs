//! Stage 1, stickiness: replicas that run now ([`Observed`]) are placed first, each on its own
//! host when every filter still passes there. Placing them before anything else is what keeps
//! their host's capacity theirs; a bonus score could not. Replicas of changed services are pinned
//! last, so that when a changed service grew, it moves rather than its neighbours. A replica
//! observed on an unreachable host stays there (`up --on-unreachable skip`: it cannot be changed);
//! to move such replicas (`reschedule`), the caller treats the host as gone and passes none of
//! its replicas.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::engine::{Engine, Instance};
use super::{NodeState, Observed};

/// What stickiness placed: the instances (group, replica) pinned to their hosts. Consolidation
/// never moves them, and the later stages leave them out. As many as the observed replicas, not
/// as the project's.
pub(super) struct Sticky {
    pub(super) pinned: HashSet<(usize, u32)>,
}

impl Engine<'_> {
    pub(super) fn place_sticky(
        &mut self,
        observed: &[Observed],
        changed: &BTreeSet<String>,
    ) -> Sticky {
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
            let (Some(&group), Some(&h)) = (
                self.units.group_of.get(service),
                host_index.get(host.as_str()),
            ) else {
                continue;
            };
            let p = &self.units.groups[group];
            if p.global
                || *replica == 0
                || *replica > p.replicas
                || pinned.contains(&(group, *replica))
            {
                continue;
            }
            let inst = Instance {
                group,
                replica: *replica,
                shape: p.shape_of(*replica),
            };
            let shape = &self.units.shapes[inst.shape];
            // A host that does not answer keeps what is recorded there whatever the filters say
            // (nothing can be changed there); one treated as gone is given no replicas at all.
            let kept = self.nodes[h].state == NodeState::Unreachable;
            if kept || self.check(shape, h).is_ok() {
                self.commit(inst, h);
                pinned.insert((group, *replica));
            }
        }
        Sticky { pinned }
    }
}
