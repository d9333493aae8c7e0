//! Stage 2, global groups (`deploy.mode: global`): one instance on every host that passes the
//! host-only filters, or an explanation for each host where the rest of the filters fail.

use super::engine::{Engine, Instance};
use super::explain::Histogram;
use super::filter;
use super::Unplaced;

impl Engine<'_> {
    /// Places every global group.
    pub(super) fn place_globals(&mut self) {
        for group in 0..self.units.groups.len() {
            if self.units.groups[group].global {
                self.place_global(group);
            }
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
                group: pod,
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
}
