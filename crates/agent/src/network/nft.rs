//! Our nf_tables rules as netlink messages: one `ip compose_fleet` table holding masquerade for
//! pod traffic leaving the fleet CIDR, DNAT for published ports and service VIPs ([`super::vip`]),
//! the `forward` chain that keeps compose networks and projects apart ([`super::isolation`]) and
//! the `prerouting_raw` chain that keeps plain pod-to-pod traffic out of conntrack
//! ([`super::notrack`]). Pure: builds messages, sends nothing.
//!
//! `netlink-packet-netfilter` types tables, chains, rules and the payload/cmp/meta/immediate
//! expressions; `nat`, `masq`, `ct`, `bitwise` and `fib` it does not know (or not fully), so they are encoded here from the
//! kernel's `include/uapi/linux/netfilter/nf_tables.h`. What the kernel makes of them is checked
//! by the root tests against `nft -j list ruleset`.
//!
//! ```text
//! table ip compose_fleet {
//!   chain prerouting  { type nat hook prerouting priority dstnat; jump published }
//!   chain output      { type nat hook output priority dstnat; ip daddr != 127.0.0.0/8 jump published }
//!   chain published   { fib daddr type local tcp dport 8080 dnat to 10.213.1.2:80 ... }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!                       ip saddr 10.213.0.0/16 ip daddr != 10.213.0.0/16 masquerade
//!                       ct status dnat ip saddr 10.213.1.0/24 ip daddr 10.213.1.0/24 masquerade
//!                       ct status dnat ... snat to :61000-65535 }
//!   set net0 { ... }  chain forward { type filter hook forward priority filter; ... }
//!   chain prerouting_raw { type filter hook prerouting priority raw; ... notrack }
//! }
//! ```
//!
//! Every change rewrites the chains' rules in one atomic batch, so a change never leaves a
//! half-written table; the table goes in one batch when the last pod goes.

use std::net::Ipv4Addr;

use netlink_packet_core::{DefaultNla, NLA_F_NESTED, NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook,
    HookNumber, Immediate, InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator,
    Payload, Register, RuleAttribute, RuleMessage, TableAttribute, TableMessage, Verdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use crate::proto::net::Ipv4Net;

/// The one table the agent owns; nothing else of the host's ruleset is touched.
pub const TABLE: &str = "compose_fleet";

/// `NF_IP_PRI_NAT_DST`, `NF_IP_PRI_NAT_SRC` and `NF_IP_PRI_FILTER`: nft's `dstnat`, `srcnat`
/// and `filter`.
const PRIORITY_DSTNAT: i32 = -100;
/// `NF_IP_PRI_RAW`: nft's `raw`, before conntrack (`NF_IP_PRI_CONNTRACK`, -200).
const PRIORITY_RAW: i32 = -300;
const PRIORITY_SRCNAT: i32 = 100;
const PRIORITY_FILTER: i32 = 0;

// nf_tables.h
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(super) const NFTA_NAT_TYPE: u16 = 1;
pub(super) const NFTA_NAT_FAMILY: u16 = 2;
pub(super) const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub(super) const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
pub(super) const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
pub(super) const NFT_NAT_SNAT: u32 = 0;
pub(super) const NFT_NAT_DNAT: u32 = 1;
pub(super) const NFPROTO_IPV4: u32 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// `RTN_LOCAL`: the address is one of this host's.
const RTN_LOCAL: u32 = 2;
pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_REG_2: u32 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NF_ACCEPT: u32 = 1;
pub(super) const NFTA_CT_DREG: u16 = 1;
pub(super) const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATUS: u32 = 2;
/// `IPS_DST_NAT` of `enum ip_conntrack_status`.
const IPS_DST_NAT: u32 = 1 << 5;

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" | "" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port: `[host_ip:]port/proto` on this host goes to `pod:target`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    /// Only this host address; every local address when `None` (compose's default `0.0.0.0`).
    pub host_ip: Option<Ipv4Addr>,
    pub proto: Proto,
    pub port: u16,
    pub pod: Ipv4Addr,
    pub target: u16,
}

/// Everything our table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Pod traffic whose destination is outside this prefix is masqueraded.
    pub fleet: Ipv4Net,
    /// This host's pod subnet: a pod reaching a published port of its own host (hairpin) is
    /// masqueraded too, or the answer would go straight back over the bridge from the wrong
    /// address.
    pub subnet: Ipv4Net,
    pub published: Vec<Published>,
    /// Service VIPs and the replicas each load-balances to (see [`super::vip`]).
    pub vips: Vec<super::vip::Vip>,
    /// Addresses in this range that no VIP claims are dropped rather than routed.
    pub service_range: Option<Ipv4Net>,
    /// Which pods may reach which (see [`super::isolation`]).
    pub isolation: super::isolation::Isolation,
}

fn header() -> NetfilterHeader {
    NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0)
}

pub(super) fn nft(msg: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(header(), msg)
}

/// Batch begin and end: nf_tables applies everything between them atomically, or nothing.
pub fn framing() -> (NetfilterMessage, NetfilterMessage) {
    let h = || {
        NetfilterHeader::new(
            NetfilterProtoFamily::Unspec,
            0,
            libc::NFNL_SUBSYS_NFTABLES as u16,
        )
    };
    (
        NetfilterMessage::new(h(), ControlMessage::BatchBegin),
        NetfilterMessage::new(h(), ControlMessage::BatchEnd),
    )
}

/// One message of a batch, its netlink flags, and what it does (for error messages).
pub type Step = (NetfilterMessage, u16, String);

fn table(msg: fn(TableMessage) -> NfTablesMessage) -> NetfilterMessage {
    nft(msg(TableMessage {
        attributes: vec![TableAttribute::Name(TABLE.to_string())],
    }))
}

/// Removes our table if it exists (creating it first makes the delete never fail).
pub fn delete_batch() -> Vec<Step> {
    vec![
        (
            table(NfTablesMessage::NewTable),
            NLM_F_CREATE,
            format!("creating table ip {TABLE}"),
        ),
        (
            table(NfTablesMessage::DeleteTable),
            0,
            format!("deleting table ip {TABLE}"),
        ),
    ]
}

/// Makes our table hold exactly `rules`: creates the table, chains and sets when missing,
/// empties them and fills them again, all in one batch. The base chains are kept rather than the
/// table replaced: unregistering a chain's hook waits for an RCU grace period (10-20 ms on a
/// loaded host), which attaching a pod must not pay.
///
/// `previous` is what this process last wrote: sets it had that `rules` has not are deleted.
/// Without it (the agent just started, or the last write failed) the table is deleted first in
/// the same batch, so nothing a former agent wrote survives; that pays the grace period once.
pub fn sync_batch(rules: &Ruleset, previous: Option<&Ruleset>) -> Vec<Step> {
    if let Some(p) = previous {
        // Only set members changed (a pod without published ports came or went): no rule is
        // rewritten.
        let same_rules = Ruleset {
            isolation: p.isolation.clone(),
            ..rules.clone()
        } == *p;
        if same_rules && super::isolation::same_sets(&p.isolation, &rules.isolation) {
            return super::isolation::element_changes(&p.isolation, &rules.isolation);
        }
    }
    let mut steps = Vec::new();
    if previous.is_none() {
        steps.extend(delete_batch());
    }
    steps.push((
        table(NfTablesMessage::NewTable),
        NLM_F_CREATE,
        format!("creating table ip {TABLE}"),
    ));
    steps.push(chain(
        "prerouting",
        Some((InetHookNumber::PreRouting, PRIORITY_DSTNAT, "nat")),
    ));
    steps.push(chain(
        "output",
        Some((InetHookNumber::LocalOut, PRIORITY_DSTNAT, "nat")),
    ));
    steps.push(chain("published", None));
    steps.push(chain(super::vip::CHAIN, None));
    steps.push(chain(
        "postrouting",
        Some((InetHookNumber::PostRouting, PRIORITY_SRCNAT, "nat")),
    ));
    steps.push(chain(
        super::isolation::CHAIN,
        Some((InetHookNumber::Forward, PRIORITY_FILTER, "filter")),
    ));
    steps.push(chain(
        super::notrack::CHAIN,
        Some((InetHookNumber::PreRouting, PRIORITY_RAW, "filter")),
    ));
    for name in [
        "prerouting",
        "output",
        "published",
        super::vip::CHAIN,
        "postrouting",
        super::isolation::CHAIN,
        super::notrack::CHAIN,
    ] {
        steps.push(flush(name));
    }
    // The rules that used a stale set are gone with the flush above: it can go now.
    if let Some(previous) = previous {
        let now = rules.isolation.set_names();
        for name in previous.isolation.set_names() {
            if !now.contains(&name) {
                steps.extend(super::isolation::delete_set(&name));
            }
        }
    }
    steps.extend(super::isolation::sets(&rules.isolation));
    // Service VIPs first: a VIP is never a host address, so the order only saves work.
    steps.extend(super::vip::jumps(rules));
    steps.push(rule(
        "prerouting",
        vec![jump("published")],
        "jump published",
    ));
    let loopback = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or(rules.fleet);
    // Locally generated traffic to a published port on the host's own address is DNAT'ed too;
    // loopback is left alone (a DNAT from 127.0.0.1 to a pod would need route_localnet).
    steps.push(rule(
        "output",
        [
            match_prefix(16, loopback, Operator::NotEqual),
            vec![jump("published")],
        ]
        .concat(),
        "ip daddr != 127.0.0.0/8 jump published",
    ));
    steps.extend(super::vip::rules(rules));
    let mut published = rules.published.clone();
    published.sort();
    published.dedup();
    for p in &published {
        steps.push(rule("published", dnat(p), &describe(p)));
    }
    steps.push(rule(
        "postrouting",
        [
            match_prefix(12, rules.fleet, Operator::Equal),
            match_prefix(16, rules.fleet, Operator::NotEqual),
            vec![masquerade()],
        ]
        .concat(),
        &format!("ip saddr {0} ip daddr != {0} masquerade", rules.fleet),
    ));
    steps.push(rule(
        "postrouting",
        [
            ct_status_dnat(),
            match_prefix(12, rules.subnet, Operator::Equal),
            match_prefix(16, rules.subnet, Operator::Equal),
            vec![masquerade()],
        ]
        .concat(),
        &format!(
            "ct status dnat ip saddr {0} ip daddr {0} masquerade",
            rules.subnet
        ),
    ));
    // After the hairpin masquerade: a connection of a local pod to a local pod through a
    // published port or a VIP is answered to the bridge address, which stays tracked anyway.
    steps.extend(super::notrack::snat_rules(rules.fleet));
    steps.extend(super::isolation::rules(&rules.isolation, rules.fleet));
    steps.extend(super::notrack::rules(rules.fleet, rules.subnet.gateway()));
    steps
}

/// `p` as nft prints it.
pub fn describe(p: &Published) -> String {
    let daddr = match p.host_ip {
        Some(ip) => format!("ip daddr {ip}"),
        None => "fib daddr type local".to_string(),
    };
    format!(
        "{daddr} {proto} dport {port} dnat to {pod}:{target}",
        proto = p.proto.name(),
        port = p.port,
        pod = p.pod,
        target = p.target
    )
}

fn chain(name: &str, hook: Option<(InetHookNumber, i32, &str)>) -> Step {
    let mut attributes = vec![
        ChainAttribute::Table(TABLE.to_string()),
        ChainAttribute::Name(name.to_string()),
    ];
    if let Some((number, priority, kind)) = hook {
        attributes.push(ChainAttribute::Hook(vec![
            Hook::Number(HookNumber::Inet(number)),
            Hook::Priority(priority as u32),
        ]));
        attributes.push(ChainAttribute::Policy(NF_ACCEPT));
        attributes.push(ChainAttribute::Type(kind.to_string()));
    }
    (
        nft(NfTablesMessage::NewChain(ChainMessage { attributes })),
        NLM_F_CREATE,
        format!("creating chain {name}"),
    )
}

/// Deletes every rule of chain `name` (a rule delete without a handle).
fn flush(name: &str) -> Step {
    (
        nft(NfTablesMessage::DeleteRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.to_string()),
                RuleAttribute::Chain(name.to_string()),
            ],
        })),
        0,
        format!("flushing chain {name}"),
    )
}

pub(super) type Expr = ListAttribute<ExpressionAttribute>;

pub(super) fn rule(chain: &str, expressions: Vec<Expr>, what: &str) -> Step {
    (
        nft(NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.to_string()),
                RuleAttribute::Chain(chain.to_string()),
                RuleAttribute::Expressions(expressions),
            ],
        })),
        NLM_F_CREATE | NLM_F_APPEND,
        format!("adding rule `{what}` to chain {chain}"),
    )
}

pub(super) fn u32_be(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

/// A nested attribute from already-encoded attributes.
fn nested(kind: u16, inner: &[DefaultNla]) -> DefaultNla {
    use netlink_packet_core::Emitable;
    let mut buf = vec![0; inner.buffer_len()];
    inner.emit(&mut buf);
    DefaultNla::new(kind | NLA_F_NESTED, buf)
}

pub(super) fn other(name: &str, attributes: Vec<DefaultNla>) -> Expr {
    if attributes.is_empty() {
        // An expression without parameters has no data attribute at all (as nft sends it).
        return ListAttribute::Element(vec![ExpressionAttribute::Name(name.to_string())]);
    }
    Expressions::Other {
        expression_type: name.to_string(),
        attributes,
    }
    .into()
}

pub(super) fn payload(base: u32, offset: u32, len: u32) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

pub(super) fn cmp(op: Operator, value: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(value)),
    ])
    .into()
}

/// `ip saddr|daddr [!=] prefix` (`offset` 12 for the source, 16 for the destination): load the
/// address, mask it, compare with the network (what nft emits for a prefix).
pub(super) fn match_prefix(offset: u32, net: Ipv4Net, op: Operator) -> Vec<Expr> {
    let mask = if net.prefix() == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.prefix()))
    };
    vec![
        payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4),
        bitwise_and(mask.to_be_bytes().to_vec()),
        cmp(op, net.network().octets().to_vec()),
    ]
}

/// `reg1 = reg1 & mask` (a bitwise expression with a zero xor).
pub(super) fn bitwise_and(mask: Vec<u8>) -> Expr {
    // NFTA_BITWISE_MASK / _XOR each hold one NFTA_DATA_VALUE.
    let data = |kind: u16, v: Vec<u8>| nested(kind, &[DefaultNla::new(NFTA_DATA_VALUE, v)]);
    let len = mask.len() as u32;
    let zero = vec![0; mask.len()];
    other(
        "bitwise",
        vec![
            u32_be(NFTA_BITWISE_SREG, NFT_REG_1),
            u32_be(NFTA_BITWISE_DREG, NFT_REG_1),
            u32_be(NFTA_BITWISE_LEN, len),
            data(NFTA_BITWISE_MASK, mask),
            data(NFTA_BITWISE_XOR, zero),
        ],
    )
}

/// `ct status dnat`: the connection's destination was rewritten (a published port).
pub(super) fn ct_status_dnat() -> Vec<Expr> {
    vec![
        other(
            "ct",
            vec![
                u32_be(NFTA_CT_DREG, NFT_REG_1),
                u32_be(NFTA_CT_KEY, NFT_CT_STATUS),
            ],
        ),
        // The status word is in host byte order.
        bitwise_and(IPS_DST_NAT.to_ne_bytes().to_vec()),
        cmp(Operator::NotEqual, vec![0; 4]),
    ]
}

pub(super) fn jump(chain: &str) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![
            VerdictAttribute::Code(Verdict::Jump),
            VerdictAttribute::Chain(chain.to_string()),
        ])),
    ])
    .into()
}

pub(super) fn load(register: Register, value: Vec<u8>) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(register),
        Immediate::Data(DataAttribute::Value(value)),
    ])
    .into()
}

fn masquerade() -> Expr {
    other("masq", vec![])
}

/// `fib daddr type local`: the destination is one of this host's addresses.
fn fib_daddr_local() -> Vec<Expr> {
    vec![
        other(
            "fib",
            vec![
                u32_be(NFTA_FIB_DREG, NFT_REG_1),
                u32_be(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                u32_be(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR),
            ],
        ),
        // The fib expression stores the address type in host byte order.
        cmp(Operator::Equal, RTN_LOCAL.to_ne_bytes().to_vec()),
    ]
}

fn dnat(p: &Published) -> Vec<Expr> {
    let mut e = match p.host_ip {
        Some(ip) => vec![
            payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
            cmp(Operator::Equal, ip.octets().to_vec()),
        ],
        None => fib_daddr_local(),
    };
    e.push(
        Expressions::Meta(vec![
            Meta::DestinationRegister(Register::Reg1),
            Meta::Key(MetaKey::L4Proto),
        ])
        .into(),
    );
    e.push(cmp(Operator::Equal, vec![p.proto.number()]));
    e.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
    e.push(cmp(Operator::Equal, p.port.to_be_bytes().to_vec()));
    e.push(load(Register::Reg1, p.pod.octets().to_vec()));
    e.push(load(Register::Reg2, p.target.to_be_bytes().to_vec()));
    e.push(other(
        "nat",
        vec![
            u32_be(NFTA_NAT_TYPE, NFT_NAT_DNAT),
            u32_be(NFTA_NAT_FAMILY, NFPROTO_IPV4),
            u32_be(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1),
            u32_be(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2),
        ],
    ));
    e
}

/// A chain of another table that drops forwarded traffic: ours cannot override it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardDrop {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// Who most likely made it, from the table and chain names.
    pub owner: &'static str,
    /// `policy drop`, or a rule that drops or rejects.
    pub how: &'static str,
}

impl std::fmt::Display for ForwardDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (table {} {}, chain {}: {})",
            self.owner, self.family, self.table, self.chain, self.how
        )
    }
}

/// The family name nft prints.
pub fn family_name(family: u8) -> &'static str {
    match family {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "unknown",
    }
}

/// Guesses which firewall made a table, for the report.
pub fn owner_of(table: &str, chains: &[String]) -> &'static str {
    let any = |s: &str| chains.iter().any(|c| c.to_ascii_lowercase().contains(s));
    if table.contains("firewalld") {
        "firewalld"
    } else if any("ufw") {
        "ufw"
    } else if any("docker") {
        "Docker"
    } else if table == "filter" {
        "iptables"
    } else {
        "another nftables table"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Ruleset {
        Ruleset {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            published: vec![
                Published {
                    host_ip: None,
                    proto: Proto::Tcp,
                    port: 8080,
                    pod: "10.213.1.2".parse().unwrap(),
                    target: 80,
                },
                Published {
                    host_ip: Some("10.250.0.11".parse().unwrap()),
                    proto: Proto::Udp,
                    port: 53,
                    pod: "10.213.1.3".parse().unwrap(),
                    target: 5353,
                },
            ],
            vips: vec![],
            service_range: None,
            isolation: super::super::isolation::Isolation {
                networks: [(
                    "p/default".to_string(),
                    ["10.213.1.2".parse().unwrap(), "10.213.1.3".parse().unwrap()].into(),
                )]
                .into(),
                ..Default::default()
            },
        }
    }

    fn names(steps: Vec<Step>) -> Vec<String> {
        steps.into_iter().map(|s| s.2).collect()
    }

    #[test]
    fn the_batch_refills_every_chain_and_set_and_names_every_rule() {
        let mut previous = rules();
        previous.published.pop();
        previous
            .isolation
            .networks
            .insert("q/default".into(), ["10.213.1.9".parse().unwrap()].into());
        let steps = names(sync_batch(&rules(), Some(&previous)));
        assert_eq!(
            steps,
            [
                "creating table ip compose_fleet",
                "creating chain prerouting",
                "creating chain output",
                "creating chain published",
                "creating chain services",
                "creating chain postrouting",
                "creating chain forward",
                "creating chain prerouting_raw",
                "flushing chain prerouting",
                "flushing chain output",
                "flushing chain published",
                "flushing chain services",
                "flushing chain postrouting",
                "flushing chain forward",
                "flushing chain prerouting_raw",
                "creating set net1",
                "deleting set net1",
                "creating set net0",
                "flushing set net0",
                "adding 2 addresses of p/default to set net0",
                "adding rule `jump published` to chain prerouting",
                "adding rule `ip daddr != 127.0.0.0/8 jump published` to chain output",
                "adding rule `fib daddr type local tcp dport 8080 dnat to 10.213.1.2:80` to chain published",
                "adding rule `ip daddr 10.250.0.11 udp dport 53 dnat to 10.213.1.3:5353` to chain published",
                "adding rule `ip saddr 10.213.0.0/16 ip daddr != 10.213.0.0/16 masquerade` to chain postrouting",
                "adding rule `ct status dnat ip saddr 10.213.1.0/24 ip daddr 10.213.1.0/24 masquerade` to chain postrouting",
                "adding rule `ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto tcp snat to :61000-65535` to chain postrouting",
                "adding rule `ct status dnat ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 meta l4proto udp snat to :61000-65535` to chain postrouting",
                "adding rule `ct state established,related accept` to chain forward",
                "adding rule `ip daddr != 10.213.0.0/16 accept` to chain forward",
                "adding rule `ip saddr != 10.213.0.0/16 accept` to chain forward",
                "adding rule `ct status dnat ct original ip daddr != 10.214.0.0/16 accept` to chain forward",
                "adding rule `ip saddr @net0 ip daddr @net0 accept` to chain forward",
                "adding rule `drop` to chain forward",
                "adding rule `ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1 tcp sport < 61000 tcp dport < 61000 notrack` to chain prerouting_raw",
                "adding rule `ip saddr 10.213.0.0/16 ip daddr 10.213.0.0/16 ip daddr != 10.213.1.1 udp sport < 61000 udp dport < 61000 notrack` to chain prerouting_raw",
            ]
        );
    }

    #[test]
    fn without_a_previous_table_it_is_rebuilt_from_nothing() {
        let steps = names(sync_batch(&rules(), None));
        assert_eq!(
            steps[..3],
            [
                "creating table ip compose_fleet",
                "deleting table ip compose_fleet",
                "creating table ip compose_fleet",
            ]
        );
    }

    #[test]
    fn a_change_of_members_only_touches_the_sets() {
        let previous = rules();
        let mut next = rules();
        let members = next.isolation.networks.get_mut("p/default").unwrap();
        members.remove(&"10.213.1.3".parse().unwrap());
        members.insert("10.213.2.7".parse().unwrap());
        assert_eq!(
            names(sync_batch(&next, Some(&previous))),
            [
                "removing 1 addresses of p/default from set net0",
                "adding 1 addresses of p/default to set net0",
            ]
        );
        assert!(sync_batch(&previous, Some(&previous)).is_empty());
    }

    #[test]
    fn a_forward_drop_is_named_after_the_firewall_that_made_it() {
        let chains = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            owner_of("firewalld", &chains(&["filter_FORWARD"])),
            "firewalld"
        );
        assert_eq!(
            owner_of("filter", &chains(&["FORWARD", "ufw-before-forward"])),
            "ufw"
        );
        assert_eq!(
            owner_of("filter", &chains(&["FORWARD", "DOCKER-USER"])),
            "Docker"
        );
        assert_eq!(owner_of("filter", &chains(&["FORWARD"])), "iptables");
        assert_eq!(
            owner_of("mine", &chains(&["fwd"])),
            "another nftables table"
        );
        assert_eq!(
            (family_name(2), family_name(1), family_name(10)),
            ("ip", "inet", "ip6")
        );
    }

    #[test]
    fn every_message_serializes() {
        use netlink_packet_core::{NetlinkMessage, NetlinkSerializable};
        for (msg, _, what) in sync_batch(&rules(), None) {
            let mut m = NetlinkMessage::from(msg);
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            assert_eq!(buf.len() % 4, 0, "{what}");
            let _ = m.payload.message_type();
            assert!(buf.len() > 20, "{what}");
        }
        let (b, _) = framing();
        assert_eq!(b.buffer_len(), 4);
    }
}
