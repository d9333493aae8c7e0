//! Isolation between compose networks and between projects, in our nftables table: a pod reaches
//! another pod only when they share a compose network of the same project, on one host or across
//! hosts, as docker compose's separate bridges do. Pure: builds rules, sends nothing.
//!
//! Every pod packet crosses the host's IP layer, never just the bridge: a pod's address is a
//! `/32` routed via the bridge address, and every pod port of the bridge is `isolated` (the bridge
//! forwards nothing from one pod port to another). So one `ip`-family `forward` chain sees all
//! pod-to-pod traffic, same host or not, whether or not `br_netfilter` is loaded, and no
//! `bridge`-family table is needed (see the README's networking section).
//!
//! ```text
//! set net0 { type ipv4_addr; elements = { 10.213.1.2, 10.213.2.2 } }   # p/default
//! set net1 { type ipv4_addr; elements = { 10.213.1.3 } }               # p/back
//! set no_egress { type ipv4_addr; elements = { 10.213.1.4 } }          # only on internal networks
//! chain forward { type filter hook forward priority filter; policy accept;
//!   ct state established,related accept
//!   ip saddr @no_egress ip daddr != 10.213.0.0/16 drop          # `internal: true`
//!   ip daddr != 10.213.0.0/16 accept                             # leaving the fleet
//!   ip saddr != 10.213.0.0/16 accept                             # from the hosts themselves
//!   ct status dnat ct original ip daddr != 10.214.0.0/16 accept  # published ports
//!   ip saddr @net0 ip daddr @net0 accept
//!   ip saddr @net1 ip daddr @net1 accept
//!   drop
//! }
//! ```
//!
//! A VIP is DNAT'ed in prerouting, before this chain, so a connection through a VIP is checked
//! against the replica it was sent to: reachable exactly when the replica shares a network with
//! the client. Members of a network come from the pods of this host (their `Apply`) and from the
//! service map of the project (pods of other hosts): a pod of another host that no pushed map
//! names is on no network here, and cannot reach this host's pods (nor they it) until `up` pushes
//! the map. Each rule is two hash lookups. A tracked connection walks the chain with its first
//! packet only; plain pod-to-pod TCP and UDP is untracked ([`super::notrack`]), so each of its
//! packets walks it, in either direction: `ct state` and `ct status` match no untracked packet,
//! and the set rules are symmetric, so a reply passes exactly when its request did.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use netlink_packet_core::NLM_F_CREATE;
use netlink_packet_netfilter::nftables::{
    DataAttribute, Expressions, Immediate, ListAttribute, Lookup, NfTablesMessage, Operator,
    Register, SetAttribute, SetElementAttribute, SetElementList, SetElementMessage, SetFlags,
    SetMessage, Verdict, VerdictAttribute,
};

use super::nft::{
    bitwise_and, cmp, ct_status_dnat, match_prefix, nft, other, payload, rule, u32_be, Expr, Step,
    NFTA_CT_DREG, NFTA_CT_KEY, NFT_PAYLOAD_NETWORK_HEADER, NFT_REG_1, TABLE,
};
use crate::proto::net::Ipv4Net;

/// The filter chain on the forward hook.
pub const CHAIN: &str = "forward";
/// The set of pods that may not leave the fleet.
pub const NO_EGRESS: &str = "no_egress";

/// nft's `ipv4_addr` data type (its userspace type number; the kernel only stores it).
const TYPE_IPADDR: u32 = 7;
const NFTA_CT_DIRECTION: u16 = 3;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_DST_IP: u32 = 20;
const IP_CT_DIR_ORIGINAL: u8 = 0;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const STATE_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Who may reach whom, as this host knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// Each compose network (`project/network`) and the addresses of its pods, this host's and
    /// the other hosts'.
    pub networks: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// This host's pods that are only on `internal: true` networks: no traffic out of the fleet.
    pub no_egress: BTreeSet<Ipv4Addr>,
    /// The service range: a connection DNAT'ed from an address in it came through a VIP and is
    /// checked like a direct one; any other DNAT is a published port, open to everyone.
    pub services: Ipv4Net,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            networks: BTreeMap::new(),
            no_egress: BTreeSet::new(),
            services: crate::proto::service::default_service_cidr(),
        }
    }
}

impl Isolation {
    /// The names of the sets these rules use, in the order they are created.
    pub fn set_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.networks.len())
            .map(|i| format!("net{i}"))
            .collect();
        if !self.no_egress.is_empty() {
            names.push(NO_EGRESS.to_string());
        }
        names
    }

    /// How many addresses the sets hold in all.
    pub fn elements(&self) -> usize {
        self.networks.values().map(BTreeSet::len).sum::<usize>() + self.no_egress.len()
    }
}

fn set_message(name: &str) -> SetMessage {
    SetMessage {
        attributes: vec![
            SetAttribute::Table(TABLE.to_string()),
            SetAttribute::Name(name.to_string()),
            SetAttribute::Flags(SetFlags::empty()),
            SetAttribute::KeyType(TYPE_IPADDR),
            SetAttribute::KeyLen(4),
            // The kernel requires an id (unique within the batch) on every new set; lookups here
            // name the set instead.
            SetAttribute::Id(set_id(name)),
        ],
    }
}

/// A batch-unique id from the set's name (`net<i>` → i + 1; `no_egress` → 0x8000_0000).
fn set_id(name: &str) -> u32 {
    name.strip_prefix("net")
        .and_then(|i| i.parse::<u32>().ok())
        .map_or(0x8000_0000, |i| i.saturating_add(1))
}

/// Creates set `name` if missing (an existing one is kept: its rules refer to it).
pub fn create_set(name: &str) -> Step {
    (
        nft(NfTablesMessage::NewSet(set_message(name))),
        NLM_F_CREATE,
        format!("creating set {name}"),
    )
}

/// Deletes set `name` (created first in the same batch, so it never fails for a missing one).
pub fn delete_set(name: &str) -> Vec<Step> {
    vec![
        create_set(name),
        (
            nft(NfTablesMessage::DeleteSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(TABLE.to_string()),
                    SetAttribute::Name(name.to_string()),
                ],
            })),
            0,
            format!("deleting set {name}"),
        ),
    ]
}

/// Empties set `name` (a delete of elements without a list flushes them all).
fn flush_set(name: &str) -> Step {
    (
        nft(NfTablesMessage::DeleteSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(TABLE.to_string()),
                SetElementList::Set(name.to_string()),
            ],
        })),
        0,
        format!("flushing set {name}"),
    )
}

fn fill_set(name: &str, what: &str, addrs: &BTreeSet<Ipv4Addr>) -> Option<Step> {
    if addrs.is_empty() {
        return None;
    }
    Some((
        elements_message(name, addrs, NfTablesMessage::NewSetElement),
        NLM_F_CREATE,
        format!("adding {} addresses of {what} to set {name}", addrs.len()),
    ))
}

fn elements_message(
    set: &str,
    addrs: &BTreeSet<Ipv4Addr>,
    msg: fn(SetElementMessage) -> NfTablesMessage,
) -> netlink_packet_netfilter::NetfilterMessage {
    let elements = addrs
        .iter()
        .map(|a| {
            ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(
                a.octets().to_vec(),
            ))])
        })
        .collect();
    nft(msg(SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.to_string()),
            SetElementList::Set(set.to_string()),
            SetElementList::Elements(elements),
        ],
    }))
}

/// Whether `b` differs from `a` only in which addresses its sets hold: then
/// [`element_changes`] brings the kernel from `a` to `b` without touching a rule.
pub fn same_sets(a: &Isolation, b: &Isolation) -> bool {
    a.services == b.services
        && a.networks.keys().eq(b.networks.keys())
        && a.no_egress.is_empty() == b.no_egress.is_empty()
}

/// The element additions and removals from `a` to `b` (which must be [`same_sets`]). No rule
/// is deleted, so the commit does not wait for an RCU grace period as a chain flush does:
/// attaching a pod stays cheap.
pub fn element_changes(a: &Isolation, b: &Isolation) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut pairs: Vec<(String, &str, &BTreeSet<Ipv4Addr>, &BTreeSet<Ipv4Addr>)> = a
        .networks
        .iter()
        .zip(&b.networks)
        .enumerate()
        .map(|(i, ((what, old), (_, new)))| (format!("net{i}"), what.as_str(), old, new))
        .collect();
    if !b.no_egress.is_empty() {
        pairs.push((
            NO_EGRESS.to_string(),
            "internal-only pods",
            &a.no_egress,
            &b.no_egress,
        ));
    }
    for (set, what, old, new) in pairs {
        let gone: BTreeSet<Ipv4Addr> = old.difference(new).copied().collect();
        let added: BTreeSet<Ipv4Addr> = new.difference(old).copied().collect();
        if !gone.is_empty() {
            steps.push((
                elements_message(&set, &gone, NfTablesMessage::DeleteSetElement),
                0,
                format!("removing {} addresses of {what} from set {set}", gone.len()),
            ));
        }
        if !added.is_empty() {
            steps.push((
                elements_message(&set, &added, NfTablesMessage::NewSetElement),
                NLM_F_CREATE,
                format!("adding {} addresses of {what} to set {set}", added.len()),
            ));
        }
    }
    steps
}

/// The sets, created when missing, emptied and filled again.
pub fn sets(iso: &Isolation) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut fills = Vec::new();
    for (i, (network, members)) in iso.networks.iter().enumerate() {
        let name = format!("net{i}");
        steps.push(create_set(&name));
        steps.push(flush_set(&name));
        fills.extend(fill_set(&name, network, members));
    }
    if !iso.no_egress.is_empty() {
        steps.push(create_set(NO_EGRESS));
        steps.push(flush_set(NO_EGRESS));
        fills.extend(fill_set(NO_EGRESS, "internal-only pods", &iso.no_egress));
    }
    steps.extend(fills);
    steps
}

/// The rules of [`CHAIN`].
pub fn rules(iso: &Isolation, fleet: Ipv4Net) -> Vec<Step> {
    let mut steps = vec![rule(
        CHAIN,
        [ct_state_established_related(), vec![verdict(NF_ACCEPT)]].concat(),
        "ct state established,related accept",
    )];
    if !iso.no_egress.is_empty() {
        steps.push(rule(
            CHAIN,
            [
                lookup(12, NO_EGRESS),
                match_prefix(16, fleet, Operator::NotEqual),
                vec![verdict(NF_DROP)],
            ]
            .concat(),
            &format!("ip saddr @{NO_EGRESS} ip daddr != {fleet} drop"),
        ));
    }
    steps.push(rule(
        CHAIN,
        [
            match_prefix(16, fleet, Operator::NotEqual),
            vec![verdict(NF_ACCEPT)],
        ]
        .concat(),
        &format!("ip daddr != {fleet} accept"),
    ));
    steps.push(rule(
        CHAIN,
        [
            match_prefix(12, fleet, Operator::NotEqual),
            vec![verdict(NF_ACCEPT)],
        ]
        .concat(),
        &format!("ip saddr != {fleet} accept"),
    ));
    steps.push(rule(
        CHAIN,
        [
            ct_status_dnat(),
            ct_original_daddr_outside(iso.services),
            vec![verdict(NF_ACCEPT)],
        ]
        .concat(),
        &format!(
            "ct status dnat ct original ip daddr != {} accept",
            iso.services
        ),
    ));
    for i in 0..iso.networks.len() {
        let name = format!("net{i}");
        steps.push(rule(
            CHAIN,
            [
                lookup(12, &name),
                lookup(16, &name),
                vec![verdict(NF_ACCEPT)],
            ]
            .concat(),
            &format!("ip saddr @{name} ip daddr @{name} accept"),
        ));
    }
    steps.push(rule(CHAIN, vec![verdict(NF_DROP)], "drop"));
    steps
}

/// `ip saddr @set` (offset 12) or `ip daddr @set` (offset 16).
fn lookup(offset: u32, set: &str) -> Vec<Expr> {
    vec![
        payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4),
        Expressions::Lookup(vec![
            Lookup::Set(set.to_string()),
            Lookup::SourceRegister(Register::Reg1),
        ])
        .into(),
    ]
}

fn ct(key: u32, direction: Option<u8>) -> Expr {
    let mut attributes = vec![u32_be(NFTA_CT_DREG, NFT_REG_1), u32_be(NFTA_CT_KEY, key)];
    if let Some(d) = direction {
        attributes.push(netlink_packet_core::DefaultNla::new(
            NFTA_CT_DIRECTION,
            vec![d],
        ));
    }
    other("ct", attributes)
}

/// `ct state established,related`: the state bits are in host byte order.
fn ct_state_established_related() -> Vec<Expr> {
    vec![
        ct(NFT_CT_STATE, None),
        bitwise_and(STATE_ESTABLISHED_RELATED.to_ne_bytes().to_vec()),
        cmp(Operator::NotEqual, vec![0; 4]),
    ]
}

/// `ct original ip daddr != range`: the address the client connected to, before any DNAT.
fn ct_original_daddr_outside(range: Ipv4Net) -> Vec<Expr> {
    let mask = if range.prefix() == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(range.prefix()))
    };
    vec![
        ct(NFT_CT_DST_IP, Some(IP_CT_DIR_ORIGINAL)),
        bitwise_and(mask.to_be_bytes().to_vec()),
        cmp(Operator::NotEqual, range.network().octets().to_vec()),
    ]
}

fn verdict(code: u32) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Other(code),
        )])),
    ])
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso() -> Isolation {
        let ips = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect();
        Isolation {
            networks: [
                ("p/back".to_string(), ips(&["10.213.1.3", "10.213.2.2"])),
                ("p/default".to_string(), ips(&["10.213.1.2"])),
            ]
            .into(),
            no_egress: ips(&["10.213.1.3"]),
            services: "10.214.0.0/16".parse().unwrap(),
        }
    }

    #[test]
    fn one_set_and_one_rule_per_network_then_drop() {
        let i = iso();
        let fleet = "10.213.0.0/16".parse().unwrap();
        let steps: Vec<String> = sets(&i)
            .into_iter()
            .chain(rules(&i, fleet))
            .map(|s| s.2)
            .collect();
        assert_eq!(
            steps,
            [
                "creating set net0",
                "flushing set net0",
                "creating set net1",
                "flushing set net1",
                "creating set no_egress",
                "flushing set no_egress",
                "adding 2 addresses of p/back to set net0",
                "adding 1 addresses of p/default to set net1",
                "adding 1 addresses of internal-only pods to set no_egress",
                "adding rule `ct state established,related accept` to chain forward",
                "adding rule `ip saddr @no_egress ip daddr != 10.213.0.0/16 drop` to chain forward",
                "adding rule `ip daddr != 10.213.0.0/16 accept` to chain forward",
                "adding rule `ip saddr != 10.213.0.0/16 accept` to chain forward",
                "adding rule `ct status dnat ct original ip daddr != 10.214.0.0/16 accept` to chain forward",
                "adding rule `ip saddr @net0 ip daddr @net0 accept` to chain forward",
                "adding rule `ip saddr @net1 ip daddr @net1 accept` to chain forward",
                "adding rule `drop` to chain forward",
            ]
        );
        assert_eq!(i.set_names(), ["net0", "net1", "no_egress"]);
        assert_eq!(i.elements(), 4);
    }

    #[test]
    fn without_internal_pods_there_is_no_egress_rule() {
        let mut i = iso();
        i.no_egress.clear();
        let fleet = "10.213.0.0/16".parse().unwrap();
        let steps: Vec<String> = rules(&i, fleet).into_iter().map(|s| s.2).collect();
        assert!(!steps.iter().any(|s| s.contains(NO_EGRESS)), "{steps:?}");
        assert!(!i.set_names().contains(&NO_EGRESS.to_string()));
    }
}
