//! Pod addressing shared by the CLI and the agent: IPv4 prefixes, and the pure choice of each
//! host's pod subnet inside the fleet CIDR (the CLI decides, the agent records it on the host).
//!
//! A host keeps the subnet it reports, so the assignment survives deploys and is the same from
//! any laptop; hosts without one get the lowest free `/24`, in host-name order so that two runs
//! over the same reports agree.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The fleet CIDR when the inventory sets none.
pub const DEFAULT_FLEET_CIDR: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(10, 213, 0, 0),
    prefix: 16,
};

/// Every host's pod subnet is this long: 253 pods (`.1` is the host's bridge).
pub const HOST_PREFIX: u8 = 24;

/// An IPv4 prefix, always stored with its host bits cleared (`10.213.1.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The prefix containing `addr`; `None` when `prefix` is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        (prefix <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The `n`th address of the prefix (0 is the network address); `None` past its end.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (u64::from(n) < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// The `n`th sub-prefix of length `prefix` (which must not be shorter than ours).
    pub fn subnet(&self, prefix: u8, n: u32) -> Option<Ipv4Net> {
        if prefix < self.prefix || prefix > 32 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(n) >= count {
            return None;
        }
        let step = 1u64 << (32 - prefix);
        let addr = u64::from(u32::from(self.addr)) + u64::from(n) * step;
        Ipv4Net::new(Ipv4Addr::from(addr as u32), prefix)
    }

    /// The host's own address in its pod subnet: the bridge, `.1`.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        if self.prefix > 30 {
            return None;
        }
        self.nth(1)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a string is not an IPv4 prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNetError(String);

impl fmt::Display for ParseNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an IPv4 prefix such as 10.213.0.0/16",
            self.0
        )
    }
}

impl std::error::Error for ParseNetError {}

impl FromStr for Ipv4Net {
    type Err = ParseNetError;

    /// Parses `a.b.c.d/len`. Host bits must be zero, so a typo such as `10.213.1.0/16` is
    /// reported rather than silently widened.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseNetError(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let net = Ipv4Net::new(addr, prefix).ok_or_else(err)?;
        if net.addr != addr {
            return Err(err());
        }
        Ok(net)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the fleet's hosts cannot all get a pod subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubnetError {
    /// The fleet CIDR is too small to hold even one host subnet.
    FleetTooSmall { fleet: Ipv4Net },
    /// A host reports a subnet outside the fleet CIDR (the inventory's CIDR changed after hosts
    /// got theirs).
    OutsideFleet {
        host: String,
        subnet: Ipv4Net,
        fleet: Ipv4Net,
    },
    /// Two hosts report overlapping subnets (a cloned disk, or a manual edit).
    Conflict {
        hosts: (String, String),
        subnet: Ipv4Net,
    },
    /// Every subnet of the fleet CIDR is taken.
    Exhausted { fleet: Ipv4Net, hosts: usize },
}

impl fmt::Display for SubnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubnetError::FleetTooSmall { fleet } => write!(
                f,
                "the fleet CIDR {fleet} is smaller than one host subnet (/{HOST_PREFIX}); use a \
                 shorter prefix such as /16"
            ),
            SubnetError::OutsideFleet {
                host,
                subnet,
                fleet,
            } => write!(
                f,
                "host {host} has pod subnet {subnet}, outside the fleet CIDR {fleet}; set the \
                 inventory's CIDR back, or remove the host's pods and its network state to \
                 renumber it"
            ),
            SubnetError::Conflict { hosts, subnet } => write!(
                f,
                "hosts {} and {} both have pod subnet {subnet}; remove the network state of one \
                 of them (its pods first) so that it gets a new subnet",
                hosts.0, hosts.1
            ),
            SubnetError::Exhausted { fleet, hosts } => write!(
                f,
                "the fleet CIDR {fleet} has room for {} host subnets, and {hosts} hosts need one; \
                 use a shorter prefix",
                fleet.size() >> (32 - HOST_PREFIX)
            ),
        }
    }
}

impl std::error::Error for SubnetError {}

/// Each host's pod subnet: the one it reports (`Some`), or the lowest free `/24` of `fleet`.
/// `reported` holds every host of the fleet, with the subnet its agent has recorded, if any.
/// Pure and deterministic: the same reports give the same answer on every laptop.
pub fn assign_subnets(
    fleet: Ipv4Net,
    reported: &BTreeMap<String, Option<Ipv4Net>>,
) -> Result<BTreeMap<String, Ipv4Net>, SubnetError> {
    if fleet.prefix > HOST_PREFIX {
        return Err(SubnetError::FleetTooSmall { fleet });
    }
    let mut assigned: BTreeMap<String, Ipv4Net> = BTreeMap::new();
    for (host, subnet) in reported {
        let Some(subnet) = *subnet else { continue };
        if subnet.prefix != HOST_PREFIX || !fleet.contains(subnet.addr) {
            return Err(SubnetError::OutsideFleet {
                host: host.clone(),
                subnet,
                fleet,
            });
        }
        if let Some((other, _)) = assigned.iter().find(|(_, s)| s.overlaps(&subnet)) {
            return Err(SubnetError::Conflict {
                hosts: (other.clone(), host.clone()),
                subnet,
            });
        }
        assigned.insert(host.clone(), subnet);
    }
    let count = 1u32 << (HOST_PREFIX - fleet.prefix);
    // Subnet 0 is skipped while there is room: `10.213.1.0/24` for the first host reads better
    // than a network address that looks like the fleet's own.
    let mut candidates = (1..count).chain(std::iter::once(0));
    for host in reported.keys() {
        if assigned.contains_key(host) {
            continue;
        }
        let free = candidates
            .by_ref()
            .filter_map(|n| fleet.subnet(HOST_PREFIX, n))
            .find(|s| !assigned.values().any(|a| a == s));
        let Some(subnet) = free else {
            return Err(SubnetError::Exhausted {
                fleet,
                hosts: reported.len(),
            });
        };
        assigned.insert(host.clone(), subnet);
    }
    Ok(assigned)
}

/// What each host is told with `Apply`: its own subnet and every other host's subnet routed
/// through that host's address (host-gw: the hosts share one L2 segment). `addresses` holds the
/// hosts' IPv4 addresses as the other hosts reach them; a host without one gets its subnet but is
/// nobody's peer.
pub fn host_networks(
    fleet: Ipv4Net,
    subnets: &BTreeMap<String, Ipv4Net>,
    addresses: &BTreeMap<String, Ipv4Addr>,
) -> BTreeMap<String, crate::HostNetwork> {
    subnets
        .iter()
        .map(|(host, subnet)| {
            let peers = subnets
                .iter()
                .filter(|(other, _)| *other != host)
                .filter_map(|(other, s)| {
                    Some(crate::PeerSubnet {
                        host: other.clone(),
                        subnet: *s,
                        via: *addresses.get(other)?,
                    })
                })
                .collect();
            (
                host.clone(),
                crate::HostNetwork {
                    fleet,
                    subnet: *subnet,
                    peers,
                    mesh: None,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid prefix")
    }

    fn reports(hosts: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Ipv4Net>> {
        hosts
            .iter()
            .map(|(h, s)| (h.to_string(), s.map(net)))
            .collect()
    }

    #[test]
    fn prefixes_parse_strictly_and_print_back() {
        assert_eq!(net("10.213.0.0/16").to_string(), "10.213.0.0/16");
        assert_eq!(DEFAULT_FLEET_CIDR, net("10.213.0.0/16"));
        for bad in [
            "10.213.1.0/16",
            "10.213.0.0",
            "10.213.0.0/33",
            "10.213.0.0/+8",
            "x/8",
            "",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} should not parse");
        }
        let json = serde_json::to_string(&net("10.213.4.0/24")).expect("serializes");
        assert_eq!(json, r#""10.213.4.0/24""#);
        assert!(serde_json::from_str::<Ipv4Net>(r#""10.213.4.1/24""#).is_err());
    }

    #[test]
    fn prefix_arithmetic() {
        let fleet = net("10.213.0.0/16");
        assert_eq!(fleet.subnet(24, 3), Some(net("10.213.3.0/24")));
        assert_eq!(fleet.subnet(24, 256), None);
        assert_eq!(
            net("10.213.3.0/24").gateway(),
            Some("10.213.3.1".parse().unwrap())
        );
        assert!(fleet.contains("10.213.255.255".parse().unwrap()));
        assert!(!fleet.contains("10.214.0.0".parse().unwrap()));
        assert!(fleet.overlaps(&net("10.213.7.0/24")));
        assert!(!net("10.213.7.0/24").overlaps(&net("10.213.8.0/24")));
    }

    #[test]
    fn new_hosts_get_the_lowest_free_subnets_in_name_order() {
        let got = assign_subnets(
            DEFAULT_FLEET_CIDR,
            &reports(&[("c", None), ("a", Some("10.213.1.0/24")), ("b", None)]),
        )
        .expect("assigns");
        let got: Vec<String> = got.iter().map(|(h, s)| format!("{h}={s}")).collect();
        assert_eq!(
            got,
            ["a=10.213.1.0/24", "b=10.213.2.0/24", "c=10.213.3.0/24"]
        );
    }

    #[test]
    fn a_host_keeps_its_subnet_when_others_come_and_go() {
        let first = assign_subnets(
            DEFAULT_FLEET_CIDR,
            &reports(&[("h1", None), ("h2", None), ("h3", None)]),
        )
        .expect("assigns");
        // h1 leaves; h3 reports what it was given; a new host h0 sorts first.
        let again = assign_subnets(
            DEFAULT_FLEET_CIDR,
            &reports(&[
                ("h0", None),
                ("h2", Some(&first["h2"].to_string())),
                ("h3", Some(&first["h3"].to_string())),
            ]),
        )
        .expect("assigns");
        assert_eq!(again["h2"], first["h2"]);
        assert_eq!(again["h3"], first["h3"]);
        assert_eq!(again["h0"], first["h1"], "the freed subnet is reused");
    }

    #[test]
    fn conflicts_and_foreign_subnets_are_errors_naming_the_hosts() {
        let err = assign_subnets(
            DEFAULT_FLEET_CIDR,
            &reports(&[("a", Some("10.213.5.0/24")), ("b", Some("10.213.5.0/24"))]),
        )
        .expect_err("conflict");
        assert!(err.to_string().contains("hosts a and b"), "{err}");
        let err = assign_subnets(DEFAULT_FLEET_CIDR, &reports(&[("a", Some("10.99.5.0/24"))]))
            .expect_err("outside");
        assert!(
            err.to_string()
                .contains("host a has pod subnet 10.99.5.0/24"),
            "{err}"
        );
    }

    #[test]
    fn every_host_routes_the_others_through_their_addresses() {
        let subnets = assign_subnets(
            DEFAULT_FLEET_CIDR,
            &reports(&[("a", None), ("b", None), ("c", None)]),
        )
        .unwrap();
        let addresses: BTreeMap<String, Ipv4Addr> = [("a", "10.0.0.1"), ("b", "10.0.0.2")]
            .iter()
            .map(|(h, a)| (h.to_string(), a.parse().unwrap()))
            .collect();
        let nets = host_networks(DEFAULT_FLEET_CIDR, &subnets, &addresses);
        let peers = |h: &str| -> Vec<String> {
            nets[h]
                .peers
                .iter()
                .map(|p| format!("{} {} via {}", p.host, p.subnet, p.via))
                .collect()
        };
        assert_eq!(nets["a"].subnet, net("10.213.1.0/24"));
        assert_eq!(peers("a"), ["b 10.213.2.0/24 via 10.0.0.2"]);
        assert_eq!(
            peers("c"),
            [
                "a 10.213.1.0/24 via 10.0.0.1",
                "b 10.213.2.0/24 via 10.0.0.2"
            ]
        );
    }

    #[test]
    fn a_small_fleet_fills_up_then_reports_exhaustion() {
        let fleet = net("10.213.0.0/23");
        let two = assign_subnets(fleet, &reports(&[("a", None), ("b", None)])).expect("fits");
        assert_eq!(two["a"], net("10.213.1.0/24"));
        assert_eq!(two["b"], net("10.213.0.0/24"), "subnet 0 is used last");
        let err = assign_subnets(fleet, &reports(&[("a", None), ("b", None), ("c", None)]))
            .expect_err("full");
        assert!(
            matches!(err, SubnetError::Exhausted { hosts: 3, .. }),
            "{err:?}"
        );
        let err =
            assign_subnets(net("10.213.0.0/25"), &reports(&[("a", None)])).expect_err("small");
        assert!(matches!(err, SubnetError::FleetTooSmall { .. }));
    }
}
