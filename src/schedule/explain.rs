//! Explanations: why no host could take an instance, as a histogram of reasons a human reads
//! ("0/5 hosts fit — 3 lack memory (needs 4 GiB, most free 2.5 GiB), 2 have 5432/tcp taken").

use std::collections::BTreeMap;

use super::engine::{Engine, Instance};
use super::filter::Reject;
use super::units::Shape;
use super::Unplaced;
use crate::human::{format_bytes, format_cpus};

impl Engine<'_> {
    /// Every host through the whole pipeline, to say why none fits.
    pub(super) fn explain(&mut self, inst: Instance) {
        let shape = &self.units.shapes[inst.shape];
        let mut hist = Histogram::default();
        for h in 0..self.nodes.len() {
            if let Err(why) = self.check(shape, h) {
                hist.add(&why);
            }
        }
        let p = &self.units.groups[inst.group];
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
}

/// Rejections counted by reason, for one pod instance.
#[derive(Default)]
pub(super) struct Histogram {
    counts: BTreeMap<Reject, usize>,
    memory: (usize, u64),
    cpu: (usize, u64),
}

impl Histogram {
    pub(super) fn add(&mut self, why: &Reject) {
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
    pub(super) fn render(&self, shape: &Shape) -> Vec<String> {
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
