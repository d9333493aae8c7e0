//! Service VIPs in our nftables table: connections to a service's virtual IP are DNAT'ed to one
//! of its healthy replicas, on whatever host it runs, chosen at random per connection as
//! kube-proxy's nftables mode does. Pure: builds rules, sends nothing.
//!
//! ```text
//! chain prerouting { jump services; ... }      chain output { jump services; ... }
//! chain services {
//!   ip daddr 10.214.7.9 numgen random mod 3 == 0 dnat to 10.213.2.2
//!   ip daddr 10.214.7.9 numgen random mod 2 == 0 dnat to 10.213.3.2
//!   ip daddr 10.214.7.9 dnat to 10.213.3.3
//!   ip daddr 10.214.0.0/16 drop            # a VIP without replicas, or none at all
//! }
//! ```
//!
//! The cascade is uniform: the first replica is taken with 1/3, the second with (2/3)·(1/2), the
//! last with what remains. Each rule draws its own number, so no register or map is needed; the
//! cost is linear in the number of replicas before the match (the benchmark measures it). Only
//! new connections pass nat chains, so a replica that leaves the set keeps the connections it
//! has and gets no new ones. Ports are kept: a VIP forwards every port to the same port of the
//! replica, as Swarm's VIP does.

use std::net::Ipv4Addr;

use netlink_packet_netfilter::nftables::{
    DataAttribute, Expressions, Immediate, Operator, Register, Verdict, VerdictAttribute,
};

use super::nft::{
    cmp, jump, load, match_prefix, other, rule, u32_be, Expr, Ruleset, Step, NFPROTO_IPV4,
    NFTA_NAT_FAMILY, NFTA_NAT_REG_ADDR_MIN, NFTA_NAT_TYPE, NFT_NAT_DNAT, NFT_REG_1,
};

/// The chain holding the VIP rules.
pub const CHAIN: &str = "services";

// nf_tables.h: the numgen expression.
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFT_NG_RANDOM: u32 = 1;
/// `NF_DROP`.
const DROP: u32 = 0;

/// One service VIP and the replica addresses it balances over (none: connections are dropped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vip {
    pub addr: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

/// The jumps into [`CHAIN`] from the prerouting (pods) and output (the host itself) chains.
pub fn jumps(rules: &Ruleset) -> Vec<Step> {
    if rules.vips.is_empty() && rules.service_range.is_none() {
        return Vec::new();
    }
    vec![
        rule("prerouting", vec![jump(CHAIN)], "jump services"),
        rule("output", vec![jump(CHAIN)], "jump services"),
    ]
}

/// The rules of [`CHAIN`].
pub fn rules(rules: &Ruleset) -> Vec<Step> {
    let mut vips = rules.vips.clone();
    vips.sort();
    vips.dedup_by(|a, b| a.addr == b.addr);
    let mut steps = Vec::new();
    for vip in &vips {
        let mut backends = vip.backends.clone();
        backends.sort();
        backends.dedup();
        let n = backends.len();
        for (i, b) in backends.iter().enumerate() {
            let mut e = vec![
                super::nft::payload(super::nft::NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
                cmp(Operator::Equal, vip.addr.octets().to_vec()),
            ];
            let left = (n - i) as u32;
            let what = if left > 1 {
                e.extend(numgen_is_zero(left));
                format!(
                    "ip daddr {} numgen random mod {left} == 0 dnat to {b}",
                    vip.addr
                )
            } else {
                format!("ip daddr {} dnat to {b}", vip.addr)
            };
            e.extend(dnat_addr(*b));
            steps.push(rule(CHAIN, e, &what));
        }
        if backends.is_empty() {
            steps.push(rule(
                CHAIN,
                vec![
                    super::nft::payload(super::nft::NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
                    cmp(Operator::Equal, vip.addr.octets().to_vec()),
                    drop(),
                ],
                &format!("ip daddr {} drop", vip.addr),
            ));
        }
    }
    if let Some(range) = rules.service_range {
        // Whatever no VIP rule took: never routed (it would leave the host by its default route).
        let mut e = match_prefix(16, range, Operator::Equal);
        e.push(drop());
        steps.push(rule(CHAIN, e, &format!("ip daddr {range} drop")));
    }
    steps
}

/// `numgen random mod m == 0`.
fn numgen_is_zero(modulus: u32) -> Vec<Expr> {
    vec![
        other(
            "numgen",
            vec![
                u32_be(NFTA_NG_DREG, NFT_REG_1),
                u32_be(NFTA_NG_MODULUS, modulus),
                u32_be(NFTA_NG_TYPE, NFT_NG_RANDOM),
            ],
        ),
        // Zero reads the same in either byte order.
        cmp(Operator::Equal, vec![0; 4]),
    ]
}

/// `dnat to addr` (the port is kept).
fn dnat_addr(addr: Ipv4Addr) -> Vec<Expr> {
    vec![
        load(Register::Reg1, addr.octets().to_vec()),
        other(
            "nat",
            vec![
                u32_be(NFTA_NAT_TYPE, NFT_NAT_DNAT),
                u32_be(NFTA_NAT_FAMILY, NFPROTO_IPV4),
                u32_be(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1),
            ],
        ),
    ]
}

fn drop() -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(DROP),
        )])),
    ])
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ruleset(vips: Vec<Vip>) -> Ruleset {
        Ruleset {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            published: vec![],
            vips,
            service_range: Some("10.214.0.0/16".parse().unwrap()),
            isolation: Default::default(),
        }
    }

    #[test]
    fn a_vip_cascades_over_its_replicas_and_an_empty_one_drops() {
        let r = ruleset(vec![
            Vip {
                addr: "10.214.0.9".parse().unwrap(),
                backends: vec![
                    "10.213.3.2".parse().unwrap(),
                    "10.213.2.2".parse().unwrap(),
                    "10.213.3.3".parse().unwrap(),
                ],
            },
            Vip {
                addr: "10.214.0.5".parse().unwrap(),
                backends: vec![],
            },
        ]);
        let steps: Vec<String> = rules(&r).into_iter().map(|s| s.2).collect();
        assert_eq!(
            steps,
            [
                "adding rule `ip daddr 10.214.0.5 drop` to chain services",
                "adding rule `ip daddr 10.214.0.9 numgen random mod 3 == 0 dnat to 10.213.2.2` to chain services",
                "adding rule `ip daddr 10.214.0.9 numgen random mod 2 == 0 dnat to 10.213.3.2` to chain services",
                "adding rule `ip daddr 10.214.0.9 dnat to 10.213.3.3` to chain services",
                "adding rule `ip daddr 10.214.0.0/16 drop` to chain services",
            ]
        );
        assert_eq!(jumps(&r).len(), 2);
    }

    #[test]
    fn without_services_there_is_no_jump() {
        let mut r = ruleset(vec![]);
        r.service_range = None;
        assert!(jumps(&r).is_empty() && rules(&r).is_empty());
    }
}
