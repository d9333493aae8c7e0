//! Scorers: among the hosts every filter let through, how good each one is for this pod
//! instance. Higher is better; [`super::Engine::score`] adds them up.

use super::units::Amount;

/// Bin-packing. A host already in use always beats an empty one (so a new host is opened only
/// when nothing in use fits); among hosts in use, the one left with the smallest remainder wins,
/// measured as the L2 norm of the free vector after placement, each dimension normalized by the
/// host's capacity. Minimizing that norm (best fit by vector length) keeps cpu and memory used
/// evenly, which is what lets a cpu-heavy and a memory-heavy replica share a host: it beats
/// first-fit decreasing on mixed loads. Among empty hosts the largest is opened first.
///
/// `size` is the host's capacity as a fraction of the largest host's (sum of both dimensions,
/// halved): only used to order empty hosts.
pub fn binpack(demand: Amount, free: Amount, capacity: Amount, empty: bool, size: f64) -> f64 {
    if empty {
        return -1.0 + 0.5 * size;
    }
    let rest = |free: u64, demand: u64, cap: u64| {
        if cap == 0 {
            0.0
        } else {
            free.saturating_sub(demand) as f64 / cap as f64
        }
    };
    let c = rest(free.cpu_millis, demand.cpu_millis, capacity.cpu_millis);
    let m = rest(free.memory, demand.memory, capacity.memory);
    1.0 - ((c * c + m * m) / 2.0).sqrt()
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
    fn binpack_prefers_tight_hosts_in_use() {
        let cap = a(1000, 1000);
        let d = a(200, 200);
        // (free, empty) pairs in the order binpack should rank them, best first.
        let ranked = [
            (a(200, 200), false), // exactly full after placement
            (a(300, 250), false),
            (a(600, 300), false),
            (a(1000, 1000), false),
            (a(1000, 1000), true), // an empty host comes last
        ];
        let scores: Vec<f64> = ranked
            .iter()
            .map(|(free, empty)| binpack(d, *free, cap, *empty, 1.0))
            .collect();
        for w in scores.windows(2) {
            assert!(w[0] > w[1], "{scores:?}");
        }
        assert_eq!(scores[0], 1.0);
    }

    #[test]
    fn binpack_balances_dimensions() {
        // A cpu-heavy replica should go where memory is the tight dimension already used.
        let cap = a(1000, 1000);
        let cpu_heavy = a(500, 100);
        let mem_full = a(600, 150); // memory mostly used: the cpu-heavy replica complements it
        let cpu_full = a(550, 700);
        assert!(
            binpack(cpu_heavy, mem_full, cap, false, 1.0)
                > binpack(cpu_heavy, cpu_full, cap, false, 1.0)
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
