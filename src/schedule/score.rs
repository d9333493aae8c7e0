//! Scorers: among the hosts every filter let through, how good each one is for this pod
//! instance. Higher is better; [`super::Engine::score`] adds them up.

use super::units::Amount;

/// Bin-packing. A host already in use always beats an empty one, so a new host is opened only
/// when nothing in use fits (and then the largest first). Among hosts in use, the score is the dot
/// product of the demand and the host's free capacity, each normalized by the host's capacity
/// (the "alignment" of Tetris and of Panigrahy et al.'s vector bin-packing heuristics): a
/// cpu-heavy replica goes where mostly cpu is left, next to memory-heavy ones, so both
/// dimensions fill together. Measured in `benches/placement.rs` against the L2-norm best fit and
/// first-fit decreasing: on anti-correlated loads it used the fewest hosts of the three.
///
/// `size` is the host's capacity as a fraction of the largest host's (mean of both dimensions):
/// only used to order empty hosts.
pub fn binpack(demand: Amount, free: Amount, capacity: Amount, empty: bool, size: f64) -> f64 {
    if empty {
        return -1.0 + 0.5 * size;
    }
    let frac = |x: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            x as f64 / cap as f64
        }
    };
    let dot = frac(demand.cpu_millis, capacity.cpu_millis)
        * frac(free.cpu_millis, capacity.cpu_millis)
        + frac(demand.memory, capacity.memory) * frac(free.memory, capacity.memory);
    dot / 2.0
}

/// Spreading one pod's replicas over hosts: each instance already on the host costs
/// `1 / replicas` (as Nomad's job anti-affinity does), so spreading wins between hosts that pack
/// about equally well, and matters most for pods with few replicas.
pub fn spread(on_host: u32, replicas: u32) -> f64 {
    if replicas <= 1 {
        0.0
    } else {
        -(on_host as f64) / replicas as f64
    }
}

/// `preferences: - spread: node.labels.KEY`: instances already in the host's group (hosts with the
/// same value of KEY; hosts without the label form one group) count against it, more strongly
/// than per-host spreading, so that groups fill evenly as Swarm does.
pub fn zone_spread(in_zone: u32, least_in_any_zone: u32, replicas: u32) -> f64 {
    if replicas == 0 {
        0.0
    } else {
        -4.0 * (in_zone.saturating_sub(least_in_any_zone)) as f64 / replicas as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(c: u64, m: u64) -> Amount {
        Amount {
            cpu_millis: c,
            memory: m,
        }
    }

    #[test]
    fn binpack_prefers_hosts_in_use_and_aligned_free_capacity() {
        let cap = a(1000, 1000);
        let cpu_heavy = a(300, 50);
        // (free, empty) in the order binpack should rank them for a cpu-heavy replica.
        let ranked = [
            (a(800, 100), false), // mostly cpu free: memory-heavy replicas live here
            (a(500, 500), false),
            (a(350, 900), false),  // mostly memory free
            (a(1000, 1000), true), // an empty host comes last
        ];
        let scores: Vec<f64> = ranked
            .iter()
            .map(|(free, empty)| binpack(cpu_heavy, *free, cap, *empty, 1.0))
            .collect();
        for w in scores.windows(2) {
            assert!(w[0] > w[1], "{scores:?}");
        }
        // Relative to the host's own capacity: the same free fraction scores the same.
        assert_eq!(
            binpack(a(100, 100), a(500, 500), a(1000, 1000), false, 1.0),
            binpack(a(200, 200), a(1000, 1000), a(2000, 2000), false, 0.5)
        );
    }

    #[test]
    fn binpack_opens_the_largest_empty_host() {
        let d = a(100, 100);
        assert!(binpack(d, a(1, 1), a(1, 1), true, 1.0) > binpack(d, a(1, 1), a(1, 1), true, 0.5));
    }

    #[test]
    fn spread_table() {
        for (on_host, replicas, want) in [
            (0, 3, 0.0),
            (1, 1, 0.0),
            (1, 2, -0.5),
            (2, 4, -0.5),
            (1, 100, -0.01),
        ] {
            assert_eq!(spread(on_host, replicas), want, "{on_host} {replicas}");
        }
        assert!(zone_spread(2, 1, 4) < zone_spread(1, 1, 4));
        assert_eq!(zone_spread(1, 1, 4), 0.0);
    }
}
