//! Connection tracking skipped for plain pod-to-pod traffic, kept for everything that needs NAT
//! state. Pure: builds rules, sends nothing.
//!
//! Why: east-west flows then take no conntrack entry (no `table full` drops from pod-to-pod
//! traffic), and conntrack on the forward path was part of host-gw's cost against the bare link
//! (untracked flows measured 0-5% faster; the README's networking section has the figures and
//! what is left). A pod-to-pod packet needs no state on its way: the isolation
//! chain checks both addresses against the network sets packet by packet, in either direction.
//! The only pod-to-pod packets that need conntrack are the replies of NATed connections (a VIP's
//! backend answering the client pod must be un-DNAT'ed on the client's host). So every NATed
//! connection whose both ends are fleet addresses gets a source port from a reserved range
//! (port-only SNAT: the address is kept, so the backend host's isolation still sees the client
//! pod), and a chain before conntrack leaves untracked exactly the TCP and UDP packets between
//! fleet addresses, to anything but this host's bridge address, with neither port in that range:
//!
//! ```text
//! chain prerouting_raw { type filter hook prerouting priority raw; policy accept;
//!   ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1
//!     tcp sport < 61000 tcp dport < 61000 notrack
//!   ...the same for udp
//! }
//! chain postrouting { ...
//!   ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto tcp snat to :61000-65535
//!   ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto udp snat to :61000-65535
//! }
//! ```
//!
//! Linux's default ephemeral range is 32768-60999, so a pod's own connections stay below the
//! reserved range; one whose `ip_local_port_range` reaches into it is only tracked on those ports
//! (both directions alike, so it still works). ICMP stays tracked (errors about a NATed
//! connection must be un-NATed), and so does everything to or from a VIP, a host address, the
//! bridge (DNS, hairpin answers) or outside the fleet.

use netlink_packet_netfilter::nftables::{Expressions, Meta, MetaKey, Operator, Register};

use super::nft::{
    cmp, ct_status_dnat, load, match_prefix, other, payload, rule, u32_be, Expr, Proto, Step,
    NFPROTO_IPV4, NFTA_NAT_FAMILY, NFTA_NAT_REG_PROTO_MAX, NFTA_NAT_REG_PROTO_MIN, NFTA_NAT_TYPE,
    NFT_NAT_SNAT, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER, NFT_REG_1, NFT_REG_2,
};
use crate::proto::net::Ipv4Net;

/// The chain on the prerouting hook at raw priority, before conntrack (not `notrack`: nft reads
/// that word as the statement, so a ruleset listing naming it could not be loaded again).
pub const CHAIN: &str = "prerouting_raw";

/// Source ports of NATed pod-to-pod connections: above Linux's default ephemeral range
/// (32768-60999), so a pod's own connections never use them.
pub const RESERVED_PORTS: (u16, u16) = (61000, 65535);
const _: () = assert!(
    RESERVED_PORTS.0 > 60999,
    "inside the default ephemeral range"
);

/// The rules of [`CHAIN`]. `bridge` is this host's address in its pod subnet: packets to it are
/// the host's own (DNS, hairpin answers) and stay tracked.
pub fn rules(fleet: Ipv4Net, bridge: Option<std::net::Ipv4Addr>) -> Vec<Step> {
    [Proto::Tcp, Proto::Udp]
        .into_iter()
        .map(|proto| {
            let mut e = l4proto(proto);
            e.extend(match_prefix(12, fleet, Operator::Equal));
            e.extend(match_prefix(16, fleet, Operator::Equal));
            // As nft prints it: the l4proto match is implied by the port matches.
            let mut what = format!("ip saddr {fleet} ip daddr {fleet}");
            if let Some(bridge) = bridge {
                e.push(payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4));
                e.push(cmp(Operator::NotEqual, bridge.octets().to_vec()));
                what.push_str(&format!(" ip daddr != {bridge}"));
            }
            // Ports are big-endian, so the kernel's memcmp orders them as numbers.
            let below = RESERVED_PORTS.0.to_be_bytes().to_vec();
            e.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2));
            e.push(cmp(Operator::LessThan, below.clone()));
            e.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
            e.push(cmp(Operator::LessThan, below));
            e.push(other("notrack", vec![]));
            what.push_str(&format!(
                " {p} sport < {r} {p} dport < {r} notrack",
                p = proto.name(),
                r = RESERVED_PORTS.0
            ));
            rule(CHAIN, e, &what)
        })
        .collect()
}

/// The postrouting rules giving every NATed connection between fleet addresses a reserved
/// source port, so that its replies are tracked (and un-NATed) on every host they cross.
pub fn snat_rules(fleet: Ipv4Net) -> Vec<Step> {
    [Proto::Tcp, Proto::Udp]
        .into_iter()
        .map(|proto| {
            let e = [
                ct_status_dnat(),
                match_prefix(12, fleet, Operator::Equal),
                match_prefix(16, fleet, Operator::Equal),
                l4proto(proto),
                snat_to_reserved(),
            ]
            .concat();
            rule(
                "postrouting",
                e,
                &format!(
                    "ct status dnat ip saddr {fleet} ip daddr {fleet} meta l4proto {} snat to :{}-{}",
                    proto.name(),
                    RESERVED_PORTS.0,
                    RESERVED_PORTS.1
                ),
            )
        })
        .collect()
}

/// `meta l4proto tcp|udp`.
fn l4proto(proto: Proto) -> Vec<Expr> {
    vec![
        Expressions::Meta(vec![
            Meta::DestinationRegister(Register::Reg1),
            Meta::Key(MetaKey::L4Proto),
        ])
        .into(),
        cmp(Operator::Equal, vec![proto.number()]),
    ]
}

/// `snat to :61000-65535`: a source port from the range, the address kept (the kernel's nat
/// expression takes proto registers without address registers).
fn snat_to_reserved() -> Vec<Expr> {
    vec![
        load(Register::Reg1, RESERVED_PORTS.0.to_be_bytes().to_vec()),
        load(Register::Reg2, RESERVED_PORTS.1.to_be_bytes().to_vec()),
        other(
            "nat",
            vec![
                u32_be(NFTA_NAT_TYPE, NFT_NAT_SNAT),
                u32_be(NFTA_NAT_FAMILY, NFPROTO_IPV4),
                u32_be(NFTA_NAT_REG_PROTO_MIN, NFT_REG_1),
                u32_be(NFTA_NAT_REG_PROTO_MAX, NFT_REG_2),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_tcp_and_udp_skip_conntrack_unless_to_the_bridge_or_on_reserved_ports() {
        let fleet = "10.213.0.0/16".parse().unwrap();
        let names: Vec<String> = rules(fleet, Some("10.213.1.1".parse().unwrap()))
            .into_iter()
            .chain(snat_rules(fleet))
            .map(|s| s.2)
            .collect();
        assert_eq!(
            names,
            [
                "adding rule `ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1 tcp sport < 61000 tcp dport < 61000 notrack` to chain prerouting_raw",
                "adding rule `ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1 udp sport < 61000 udp dport < 61000 notrack` to chain prerouting_raw",
                "adding rule `ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto tcp snat to :61000-65535` to chain postrouting",
                "adding rule `ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto udp snat to :61000-65535` to chain postrouting",
            ]
        );
    }
}
