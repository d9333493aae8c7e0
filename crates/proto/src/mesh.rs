//! The WireGuard mesh between hosts that are not on one L2 segment, as the CLI tells each host
//! ([`MeshConfig`], inside [`crate::HostNetwork`]) and as each host reports it back in `Hello`
//! ([`MeshFacts`]).
//!
//! Keys are made on each host and the private key never leaves it: a host reports only its
//! public key, and the CLI hands every host the others' public keys and endpoints over SSH. The
//! mode of each pair (routed on the L2, or through the mesh) is decided by the agent, which sees
//! whether the peer's address is on-link; the inventory can force it fleet-wide.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::net::Ipv4Net;

/// The UDP port every host's mesh listens on (WireGuard's customary port).
pub const DEFAULT_PORT: u16 = 51820;

/// A peer with no handshake for this long is down: WireGuard rejects a session this old
/// (`REJECT_AFTER_TIME`, 180 s), and keepalives (every 25 s) renew it well before.
pub const HEALTHY_WITHIN_SECS: u64 = 180;

/// How hosts reach each other's pods: the inventory's `network: { mode: … }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Per pair: routed directly when the peer is on-link, else through the mesh.
    #[default]
    Auto,
    /// Always routed directly (the hosts must share an L2 segment).
    HostGw,
    /// Always through the mesh, encrypted, even on one L2 segment.
    Wireguard,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::HostGw => "host-gw",
            Mode::Wireguard => "wireguard",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Auto, Mode::HostGw, Mode::Wireguard]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// How one pair of hosts is joined, as decided on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    HostGw,
    Wireguard,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::HostGw => "host-gw",
            Link::Wireguard => "wireguard",
        }
    }
}

/// This host's part of the mesh: the mode, its port and the other hosts' keys and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshConfig {
    #[serde(default)]
    pub mode: Mode,
    /// The UDP port this host listens on.
    pub port: u16,
    /// The other hosts that have a key (an agent too old to report one has none and is reached
    /// host-gw only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<MeshPeer>,
}

/// Another host as the mesh knows it. Its pod subnet is its [`crate::PeerSubnet`] of the same
/// `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeer {
    pub host: String,
    /// Its WireGuard public key, base64 (as `wg` prints it).
    pub public_key: String,
    /// Where its mesh listens: its address as the inventory gives it, and its port.
    pub endpoint: SocketAddr,
}

/// The mesh as a host sees it, reported in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshFacts {
    /// This host's WireGuard public key, base64; made on the host the first time it is asked.
    pub public_key: String,
    /// Each other host this host routes to, and how; empty until an `up` configured it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerHealth>,
    // --- wgkernel: which WireGuard runs the mesh (additive) ---
    /// The implementation of this host's mesh device: the one running now, else the one that
    /// ran last; `None` before the device first ran (or from an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKind>,
}

/// Which WireGuard moves a host's mesh packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// The kernel's (Linux >= 5.6, or the backport module), configured over netlink.
    Kernel,
    /// The agent's own, on a TUN device: kernels without WireGuard.
    Userspace,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Kernel => "kernel",
            DeviceKind::Userspace => "userspace",
        }
    }
}

/// One pair of hosts, seen from one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    pub host: String,
    pub subnet: Ipv4Net,
    pub link: Link,
    /// Seconds since the last completed WireGuard handshake with this peer; `None` before the
    /// first (or for host-gw peers, which have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_secs: Option<u64>,
    /// Whether the mesh device runs on this host now (it runs while the host has pods).
    #[serde(default)]
    pub device_up: bool,
}

impl PeerHealth {
    /// `ok`, `down` or `idle` (no device: the host has no pods), for `hosts`.
    pub fn health(&self) -> &'static str {
        match (self.link, self.device_up, self.handshake_age_secs) {
            (Link::HostGw, _, _) => "ok",
            (Link::Wireguard, false, _) => "idle",
            (Link::Wireguard, true, Some(age)) if age < HEALTHY_WITHIN_SECS => "ok",
            (Link::Wireguard, true, _) => "down",
        }
    }
}

/// [`add_mesh_on`] the [`DEFAULT_PORT`].
pub fn add_mesh(
    networks: &mut std::collections::BTreeMap<String, crate::HostNetwork>,
    mode: Mode,
    keys: &std::collections::BTreeMap<String, String>,
) {
    add_mesh_on(networks, mode, DEFAULT_PORT, keys)
}

/// (netiso) Gives each host of `networks` that has a key its mesh: every peer that has a key
/// too, at its address and `port` (the inventory's `network.port`, the same on every host).
/// `keys` holds the public keys hosts reported; a host without one (an older agent) gets no mesh
/// and is nobody's mesh peer. Pure, like the subnet assignment.
pub fn add_mesh_on(
    networks: &mut std::collections::BTreeMap<String, crate::HostNetwork>,
    mode: Mode,
    port: u16,
    keys: &std::collections::BTreeMap<String, String>,
) {
    for (host, net) in networks.iter_mut() {
        if !keys.contains_key(host) {
            continue;
        }
        let peers = net
            .peers
            .iter()
            .filter_map(|p| {
                Some(MeshPeer {
                    host: p.host.clone(),
                    public_key: keys.get(&p.host)?.clone(),
                    endpoint: SocketAddr::new(p.via.into(), port),
                })
            })
            .collect();
        net.mesh = Some(MeshConfig { mode, port, peers });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_with_a_key_meshes_with_every_other_that_has_one() {
        use std::collections::BTreeMap;
        let fleet: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let subnets = crate::net::assign_subnets(
            fleet,
            &["a", "b", "old"]
                .iter()
                .map(|h| (h.to_string(), None))
                .collect(),
        )
        .unwrap();
        let addresses = [("a", "10.0.0.1"), ("b", "10.0.1.2"), ("old", "10.0.0.3")]
            .iter()
            .map(|(h, a)| (h.to_string(), a.parse().unwrap()))
            .collect();
        let mut nets = crate::net::host_networks(fleet, &subnets, &addresses);
        let keys: BTreeMap<String, String> = [("a", "KA"), ("b", "KB")]
            .iter()
            .map(|(h, k)| (h.to_string(), k.to_string()))
            .collect();
        add_mesh(&mut nets, Mode::Auto, &keys);
        let a = nets["a"].mesh.as_ref().expect("a has a key");
        let peers: Vec<String> = a
            .peers
            .iter()
            .map(|p| format!("{} {} {}", p.host, p.public_key, p.endpoint))
            .collect();
        assert_eq!(peers, ["b KB 10.0.1.2:51820"]);
        assert_eq!(a.mode, Mode::Auto);
        assert!(nets["old"].mesh.is_none(), "no key, no mesh");
        // The wire form stays what older agents read: `mesh` is one optional field.
        let json = serde_json::to_value(&nets["old"]).unwrap();
        assert!(json.get("mesh").is_none());
        // The inventory's port: every host listens on it and reaches its peers there.
        add_mesh_on(&mut nets, Mode::Auto, 4500, &keys);
        let a = nets["a"].mesh.as_ref().expect("a has a key");
        assert_eq!((a.port, a.peers[0].endpoint.port()), (4500, 4500));
    }

    #[test]
    fn modes_read_as_the_inventory_writes_them() {
        for m in [Mode::Auto, Mode::HostGw, Mode::Wireguard] {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        assert_eq!(Mode::parse("vxlan"), None);
    }

    #[test]
    fn health_follows_the_handshake_age() {
        let mut p = PeerHealth {
            host: "h2".into(),
            subnet: "10.213.2.0/24".parse().unwrap(),
            link: Link::Wireguard,
            handshake_age_secs: Some(30),
            device_up: true,
        };
        assert_eq!(p.health(), "ok");
        p.handshake_age_secs = Some(HEALTHY_WITHIN_SECS);
        assert_eq!(p.health(), "down");
        p.handshake_age_secs = None;
        assert_eq!(p.health(), "down");
        p.device_up = false;
        assert_eq!(p.health(), "idle");
        p.link = Link::HostGw;
        assert_eq!(p.health(), "ok");
    }
}
