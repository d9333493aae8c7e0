//! The host's address book: its pod subnet (decided by the CLI, recorded here so every laptop
//! sees the same) and which pod holds which address. Pure; [`super::Network`] persists it as one
//! JSON file written atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::proto::net::{Ipv4Net, HOST_PREFIX};

/// Everything the agent remembers about addressing on this host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AddressBook {
    /// The fleet CIDR the subnet was taken from; pod traffic leaving it is masqueraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Ipv4Net>,
    /// This host's pod subnet; the bridge holds its `.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// Pod (`project/pod`) → its address.
    #[serde(default)]
    pub pods: BTreeMap<String, Ipv4Addr>,
    /// Host part of the last address handed out: allocation goes round the subnet, so a released
    /// address is not reused at once (peers' ARP and conntrack entries still point at it).
    #[serde(default)]
    pub last: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// No subnet recorded yet: the CLI has not told this host its subnet.
    NoSubnet,
    /// The CLI asks for a different subnet while pods still hold addresses of the old one.
    SubnetInUse {
        current: Ipv4Net,
        wanted: Ipv4Net,
        pods: usize,
    },
    /// The subnet is not a host subnet (`/24`).
    BadSubnet(Ipv4Net),
    /// Every address of the subnet is held by a pod.
    Exhausted(Ipv4Net),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::NoSubnet => f.write_str(
                "this host has no pod subnet yet; the CLI assigns one before the first pod",
            ),
            AddressError::SubnetInUse {
                current,
                wanted,
                pods,
            } => write!(
                f,
                "this host's pod subnet is {current} and {pods} pods hold addresses in it; it \
                 cannot become {wanted} until they are removed"
            ),
            AddressError::BadSubnet(s) => {
                write!(f, "{s} is not a host pod subnet (a /{HOST_PREFIX})")
            }
            AddressError::Exhausted(s) => write!(f, "every address of {s} is held by a pod"),
        }
    }
}

impl std::error::Error for AddressError {}

impl AddressBook {
    /// Records the host's subnet. Idempotent; changing it is refused while pods hold addresses.
    pub fn set_subnet(&mut self, fleet: Ipv4Net, subnet: Ipv4Net) -> Result<bool, AddressError> {
        if subnet.prefix() != HOST_PREFIX || !fleet.contains(subnet.network()) {
            return Err(AddressError::BadSubnet(subnet));
        }
        if self.subnet == Some(subnet) && self.fleet == Some(fleet) {
            return Ok(false);
        }
        if let Some(current) = self.subnet {
            if current != subnet && !self.pods.is_empty() {
                return Err(AddressError::SubnetInUse {
                    current,
                    wanted: subnet,
                    pods: self.pods.len(),
                });
            }
        }
        if self.subnet != Some(subnet) {
            self.last = 0;
        }
        self.fleet = Some(fleet);
        self.subnet = Some(subnet);
        Ok(true)
    }

    /// The address of pod `key`: the one it holds, else the next free one after the last given.
    pub fn allocate(&mut self, key: &str) -> Result<Ipv4Addr, AddressError> {
        let subnet = self.subnet.ok_or(AddressError::NoSubnet)?;
        if let Some(ip) = self.pods.get(key) {
            return Ok(*ip);
        }
        // Host parts 2..=size-2: .0 is the network, .1 the bridge, the last the broadcast.
        let size = u32::try_from(subnet.size()).unwrap_or(u32::MAX);
        let first = 2;
        let end = size.saturating_sub(1);
        let span = end.saturating_sub(first);
        let held: std::collections::BTreeSet<Ipv4Addr> = self.pods.values().copied().collect();
        let start = if (first..end).contains(&self.last) {
            self.last + 1
        } else {
            first
        };
        for i in 0..span {
            let n = first + (start - first + i) % span;
            let Some(ip) = subnet.nth(n) else { continue };
            if !held.contains(&ip) {
                self.pods.insert(key.to_string(), ip);
                self.last = n;
                return Ok(ip);
            }
        }
        Err(AddressError::Exhausted(subnet))
    }

    /// Frees pod `key`'s address; returns it.
    pub fn release(&mut self, key: &str) -> Option<Ipv4Addr> {
        self.pods.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> AddressBook {
        let mut b = AddressBook::default();
        b.set_subnet(
            "10.213.0.0/16".parse().unwrap(),
            "10.213.7.0/24".parse().unwrap(),
        )
        .expect("valid subnet");
        b
    }

    #[test]
    fn pods_get_addresses_after_the_bridge_and_keep_them() {
        let mut b = book();
        assert_eq!(b.allocate("p/web-1"), Ok("10.213.7.2".parse().unwrap()));
        assert_eq!(b.allocate("p/db-1"), Ok("10.213.7.3".parse().unwrap()));
        assert_eq!(b.allocate("p/web-1"), Ok("10.213.7.2".parse().unwrap()));
    }

    #[test]
    fn released_addresses_come_back_only_after_a_full_round() {
        let mut b = book();
        let first = b.allocate("p/a").unwrap();
        assert_eq!(b.release("p/a"), Some(first));
        assert_eq!(b.release("p/a"), None);
        assert_ne!(b.allocate("p/b").unwrap(), first);
        // Fill the subnet: the freed address is handed out last, the broadcast never.
        for i in 0..252 {
            b.allocate(&format!("p/x{i}")).expect("room left");
        }
        assert_eq!(b.pods.len(), 253);
        assert!(b.pods.values().any(|ip| *ip == first));
        assert!(!b
            .pods
            .values()
            .any(|ip| ip.octets()[3] == 255 || ip.octets()[3] < 2));
        assert_eq!(
            b.allocate("p/full"),
            Err(AddressError::Exhausted("10.213.7.0/24".parse().unwrap()))
        );
    }

    #[test]
    fn the_subnet_is_fixed_while_pods_hold_addresses() {
        let mut b = book();
        let fleet: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        assert_eq!(
            b.set_subnet(fleet, "10.213.7.0/24".parse().unwrap()),
            Ok(false)
        );
        b.allocate("p/a").unwrap();
        let err = b
            .set_subnet(fleet, "10.213.8.0/24".parse().unwrap())
            .expect_err("in use");
        assert!(err.to_string().contains("1 pods hold addresses"), "{err}");
        b.release("p/a");
        assert_eq!(
            b.set_subnet(fleet, "10.213.8.0/24".parse().unwrap()),
            Ok(true)
        );
        assert_eq!(b.allocate("p/a"), Ok("10.213.8.2".parse().unwrap()));
        assert!(matches!(
            b.set_subnet(fleet, "10.99.0.0/24".parse().unwrap()),
            Err(AddressError::BadSubnet(_))
        ));
    }

    #[test]
    fn no_subnet_no_address() {
        assert_eq!(
            AddressBook::default().allocate("p/a"),
            Err(AddressError::NoSubnet)
        );
    }

    #[test]
    fn the_book_round_trips_through_json() {
        let mut b = book();
        b.allocate("p/a").unwrap();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<AddressBook>(&json).unwrap(), b);
    }
}
