//! The fleet-wide service map the CLI pushes to every agent (`Request::Services`): each service's
//! virtual IP, endpoint mode, networks, aliases and replicas with their addresses and health; and
//! the stable choice of virtual IPs from the service range. Pure.
//!
//! The agent turns the map into two things: nftables rules that DNAT connections to a VIP across
//! the healthy replicas (`vip` mode), and DNS answers for the service names, scoped to the asking
//! pod's project and networks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::net::Ipv4Net;

/// The range virtual IPs come from: disjoint from [`crate::net::DEFAULT_FLEET_CIDR`] (pod
/// addresses) so that a VIP never shadows a pod. A VIP is never routed: nftables rewrites it on
/// the client's host before routing, and drops what no service claims.
pub fn default_service_cidr() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 214, 0, 0), 16).unwrap_or(crate::net::DEFAULT_FLEET_CIDR)
}

/// The network a service is on when its compose file names none.
pub const DEFAULT_NETWORK: &str = "default";

/// One project's services, as the CLI knows them after a deploy. The agent replaces what it holds
/// for `project` with this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceMap {
    pub project: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

impl ServiceMap {
    /// SHA-256 of the map's JSON, `sha256:HEX`. The agent reports the digest of the map it holds
    /// (`StatusReport::service_map`), so that `up` pushes a map only where it differs.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }
}

/// compose's `deploy.endpoint_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndpointMode {
    /// One virtual IP, load-balanced by nftables on the client's host.
    #[default]
    Vip,
    /// The name answers with the replicas' own addresses, in rotating order.
    Dnsrr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// Set in `vip` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    /// The compose networks the service is on; empty means [`DEFAULT_NETWORK`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// `networks.<net>.aliases`: names that resolve to this service, on that network only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<Alias>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Endpoint>,
}

impl Service {
    /// The networks the service is on, [`DEFAULT_NETWORK`] when none is named.
    pub fn network_names(&self) -> Vec<&str> {
        if self.networks.is_empty() {
            vec![DEFAULT_NETWORK]
        } else {
            self.networks.iter().map(String::as_str).collect()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub network: String,
    pub name: String,
}

/// One replica of a service: where it runs and whether it takes traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Replica number, from 1 (`<service>-<replica>` resolves to `addr`).
    pub replica: u32,
    /// The pod that runs it.
    pub pod: String,
    pub host: String,
    pub addr: Ipv4Addr,
    /// Running, and healthy if it has a healthcheck. The agent of `host` overrides this for its
    /// own replicas as their health changes.
    pub healthy: bool,
}

/// Stable virtual IPs for `services` (`project/service` names) from `range`: each name hashes to
/// an address, and a name whose address is taken (by a name that sorts before it) takes the next
/// free one. The same names give the same addresses on any machine; adding a service moves
/// another's VIP only if they collide, which a /16 makes rare. `None` when the range is too small.
pub fn assign_vips(
    range: Ipv4Net,
    services: &BTreeSet<String>,
) -> Option<BTreeMap<String, Ipv4Addr>> {
    // Host numbers 1..size-1: neither the network nor the broadcast address.
    let usable = range.size().checked_sub(2)?;
    if (services.len() as u64) > usable {
        return None;
    }
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in services {
        let mut n = fnv1a(name.as_bytes()) % usable;
        while !taken.insert(n) {
            n = (n + 1) % usable;
        }
        out.insert(name.clone(), range.nth(n as u32 + 1)?);
    }
    Some(out)
}

/// FNV-1a, 64 bits: a fixed hash (std's `DefaultHasher` may change between Rust releases, and
/// the VIPs must not).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn vips_are_stable_distinct_and_inside_the_range() {
        let a = assign_vips(default_service_cidr(), &names(&["p/api", "p/db", "q/api"])).unwrap();
        let b = assign_vips(
            default_service_cidr(),
            &names(&["p/api", "p/db", "q/api", "p/web"]),
        )
        .unwrap();
        for (k, v) in &a {
            assert_eq!(b[k], *v, "{k} keeps its VIP when a service is added");
            assert!(default_service_cidr().contains(*v));
        }
        let distinct: BTreeSet<_> = b.values().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn a_full_range_probes_and_an_overfull_one_is_refused() {
        let tiny: Ipv4Net = "10.9.9.0/30".parse().unwrap();
        let two = assign_vips(tiny, &names(&["a", "b"])).unwrap();
        let got: BTreeSet<Ipv4Addr> = two.values().copied().collect();
        assert_eq!(
            got,
            ["10.9.9.1".parse().unwrap(), "10.9.9.2".parse().unwrap()].into()
        );
        assert_eq!(assign_vips(tiny, &names(&["a", "b", "c"])), None);
    }

    #[test]
    fn a_service_without_networks_is_on_the_default_one() {
        let s = Service {
            name: "api".into(),
            endpoint_mode: EndpointMode::Vip,
            vip: None,
            networks: vec![],
            aliases: vec![],
            container_name: None,
            replicas: vec![],
        };
        assert_eq!(s.network_names(), ["default"]);
    }

    #[test]
    fn a_maps_digest_survives_the_agents_file_and_changes_with_a_replicas_health() {
        let mut map = ServiceMap {
            project: "p".into(),
            services: vec![Service {
                name: "api".into(),
                endpoint_mode: EndpointMode::Vip,
                vip: Some(Ipv4Addr::new(10, 214, 0, 9)),
                networks: vec![],
                aliases: vec![],
                container_name: None,
                replicas: vec![Endpoint {
                    replica: 1,
                    pod: "api-1".into(),
                    host: "h1".into(),
                    addr: Ipv4Addr::new(10, 213, 1, 2),
                    healthy: true,
                }],
            }],
        };
        // The agent keeps the map as pretty JSON and reads it back after a restart.
        let stored: ServiceMap =
            serde_json::from_slice(&serde_json::to_vec_pretty(&map).unwrap()).unwrap();
        assert_eq!(stored.digest(), map.digest());
        assert!(map.digest().starts_with("sha256:") && map.digest().len() == 7 + 64);
        let before = map.digest();
        map.services[0].replicas[0].healthy = false;
        assert_ne!(map.digest(), before);
    }
}
