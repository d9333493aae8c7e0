//! The kernel calls pod networking makes, behind one trait: [`Netlink`] does them for real over
//! rtnetlink and nf_tables sockets (never `ip` or `nft`); [`Recording`] records them so the
//! order of operations is unit-tested without root.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ExpressionAttribute, Expressions, Hook, HookNumber, Immediate, InetHookNumber,
    ListAttribute, NfTablesMessage, RuleAttribute, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::nftables::{ChainMessage, DataAttribute, RuleMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::constants::{NETLINK_NETFILTER, NETLINK_ROUTE};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use super::fastpath;
use super::netlink::{is_errno, Netlink as Socket};
use super::nft::{self, ForwardDrop, Ruleset};
use crate::proto::net::Ipv4Net;

/// One pod's link: a veth whose host end joins the bridge and whose pod end is `eth0` in the
/// pod's network namespace, with the pod's address and a default route via the bridge.
///
/// The pod's address is a `/32`, so a pod sends everything, even to a pod of its own host, to
/// the bridge address: it crosses the host's IP layer, where our forward chain decides whether
/// the two share a compose network ([`super::isolation`]). What a pod could still switch port to
/// port (frames it crafts for another pod's MAC) is closed one of two ways:
/// - with `br_netfilter` calling iptables hooks for bridged IPv4 (Docker and Kubernetes hosts
///   load it), bridged packets pass the same forward chain;
/// - without it, the bridge port is `isolated`: the bridge forwards nothing between pod ports.
///
/// Not both: `br_netfilter` bridges (rather than routes) a packet DNAT'ed to another port of the
/// bridge it came from (a published port or a VIP reached from a pod of the same host), which an
/// isolated port would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// The pod's bind-mounted network namespace file.
    pub netns: PathBuf,
    pub host_if: String,
    pub pod_if: String,
    pub bridge: String,
    pub addr: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The pod's record ([`super::persist::PodRecord`]), kept by the kernel as the host end's
    /// alias for as long as the link lives; set before the pod's end gets its address.
    pub alias: Option<String>,
}

/// A link of the host whose name is a pod's host end (`cfp<N>`), and its alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub alias: Option<String>,
}

/// A route to another host's pod subnet (host-gw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub subnet: Ipv4Net,
    pub via: Ipv4Addr,
}

/// Every kernel call of pod networking. Implementations must be idempotent where the doc says
/// "ensure" and tolerate missing objects on removal, so a retried or half-done step converges.
pub trait NetKernel: Send + Sync {
    /// Ensures bridge `name` exists, is up and holds `gateway/subnet.prefix`.
    fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, subnet: Ipv4Net) -> io::Result<()>;
    /// `net.ipv4.ip_forward = 1`.
    fn enable_forwarding(&self) -> io::Result<()>;
    /// Creates the pod's veth pair and configures its pod end; replaces a stale pair of the same
    /// host name.
    fn attach_pod(&self, link: &PodLink) -> io::Result<()>;
    /// Deletes link `name` (both ends of a veth); fine if it does not exist.
    fn remove_link(&self, name: &str) -> io::Result<()>;
    /// Makes our nftables table hold exactly `rules`; `previous` is what this process last wrote
    /// there (`None`: unknown, rebuild the table).
    fn replace_rules(&self, rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<()>;
    /// Deletes our nftables table; fine if it does not exist.
    fn remove_rules(&self) -> io::Result<()>;
    /// Makes our routes to other hosts' pod subnets exactly `routes`.
    fn set_routes(&self, routes: &[PeerRoute]) -> io::Result<()>;
    /// Base chains of other tables that drop forwarded packets.
    fn forward_drops(&self) -> io::Result<Vec<ForwardDrop>>;
    /// Brings an attached pod's link to what [`attach_pod`](Self::attach_pod) makes today: a
    /// pod attached by an older agent has its address as a /24 (pods of the host reach each
    /// other on the bridge, past the isolation rules) and a bridge port that is not isolated.
    /// The address stays the same, so the pod's connections survive. `Ok(true)` when something
    /// changed; `Ok(false)` for a pod already current or not attached.
    fn refresh_pod(&self, link: &PodLink) -> io::Result<bool>;
    /// The host's links named like a pod's host end (`cfp…`), with their aliases.
    fn pod_links(&self) -> io::Result<Vec<HostLink>>;
}

/// Routes we install carry this protocol number, so ours are told from the host's own.
pub const ROUTE_PROTOCOL: u8 = 213;

/// The bridge's MAC, fixed and made from its address (locally administered: `02:cf:` and the
/// four octets). Left to itself a bridge takes the lowest MAC of its ports, so it changes as
/// pods come and go: each change flushes the host's neighbour entries on it, and pods keep the
/// old MAC as their gateway's, which reaches the host only while the port that had it exists
/// (then their packets are lost until their entry is found stale, several seconds).
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x02, 0xcf, o[0], o[1], o[2], o[3]]
}

/// Gives bridge `index` its fixed MAC ([`bridge_mac`]) unless it has it already (a change is
/// one flush of the neighbour entries on it: done once).
fn set_bridge_mac(sock: &mut Socket, index: u32, name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let want = bridge_mac(gateway).to_vec();
    let current = match sock.get(
        RouteNetlinkMessage::GetLink(LinkUnspec::new_with_index(index).build()),
        &format!("reading bridge {name}"),
    )? {
        Some(RouteNetlinkMessage::NewLink(link)) => {
            link.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Address(mac) => Some(mac),
                _ => None,
            })
        }
        _ => None,
    };
    if current.as_ref() == Some(&want) {
        return Ok(());
    }
    // A bridge an older agent made, with pods on it: the kernel announces the new MAC to them
    // (gratuitous ARP) so they do not wait for their old entry to go stale.
    let _ = write_sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/arp_notify"), "1");
    let mut msg = LinkUnspec::new_with_index(index).build();
    msg.attributes.push(LinkAttribute::Address(want));
    sock.request(
        RouteNetlinkMessage::SetLink(msg),
        0,
        &format!("fixing bridge {name}'s MAC"),
    )
}

/// Deletes the neighbour entry for `addr` on link `index`, if any. The fast path routes with the
/// entry as it finds it (it never has the kernel confirm it), so an address given again to a new
/// pod, whose MAC is new, must not find the old pod's entry.
fn forget_neighbour(sock: &mut Socket, index: u32, addr: Ipv4Addr) -> io::Result<()> {
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage,
    };
    let mut msg = NeighbourMessage::default();
    msg.header.family = rtnetlink::packet_route::AddressFamily::Inet;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            addr,
        )));
    match sock.request(
        RouteNetlinkMessage::DelNeighbour(msg),
        0,
        &format!("forgetting the old neighbour entry of {addr}"),
    ) {
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// The links the fast path uses: pods' host ends, the Ethernet links our host-gw routes leave
/// by (never the mesh's device: it has no MACs), and the bridge. Uplinks that are bridges are
/// only sent to, never hooked on ingress. The uplinks (a dump of every route of the host, which
/// may be many) only `with_uplinks`: they change with our routes, not with each pod.
fn fast_path_devices(with_uplinks: bool) -> io::Result<fastpath::Devices> {
    use rtnetlink::packet_route::link::LinkLayerType;
    let mut sock = route_socket()?;
    let mut devices = fastpath::Devices::default();
    // Ethernet links: whether each is a bridge, and its MTU.
    let mut ethernet = std::collections::BTreeMap::new();
    let mut bridge_mtu = None;
    for m in sock.dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "listing the host's links",
    )? {
        let RouteNetlinkMessage::NewLink(link) = m else {
            continue;
        };
        let index = link.header.index;
        let name = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.as_str()),
            _ => None,
        });
        let mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        match name {
            Some(n) if n.starts_with("cfp") => {
                devices.pods.insert(index);
            }
            Some(n) if n == super::BRIDGE => {
                devices.bridge = Some(index);
                bridge_mtu = mtu;
            }
            _ if link.header.link_layer_type == LinkLayerType::Ether => {
                let bridge = link.attributes.iter().any(|a| match a {
                    LinkAttribute::LinkInfo(info) => info.iter().any(|i| {
                        matches!(
                            i,
                            rtnetlink::packet_route::link::LinkInfo::Kind(
                                rtnetlink::packet_route::link::InfoKind::Bridge
                            )
                        )
                    }),
                    _ => false,
                });
                ethernet.insert(index, (bridge, mtu.unwrap_or(0)));
            }
            _ => {}
        }
    }
    if !with_uplinks {
        return Ok(devices);
    }
    let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
    for m in sock.dump(RouteNetlinkMessage::GetRoute(dump), "listing routes")? {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        for a in &r.attributes {
            if let RouteAttribute::Oif(index) = a {
                if let Some(&(bridge, mtu)) = ethernet.get(index) {
                    // The kernel's path tells a pod whose packets are too big for the uplink
                    // (ICMP "fragmentation needed"); redirected GSO packets would just be cut.
                    if mtu >= bridge_mtu.unwrap_or(1500) {
                        devices.uplinks.insert(*index);
                    }
                    // On a bridge, `br_netfilter` may have run the IPv4 hooks (conntrack, NAT)
                    // before its ingress hook: a reply un-NATed there must not skip the rest.
                    if !bridge {
                        devices.ingress.insert(*index);
                    }
                }
            }
        }
    }
    Ok(devices)
}

/// The real kernel, over netlink.
#[derive(Debug, Default)]
pub struct Netlink;

pub(super) fn route_socket() -> io::Result<Socket> {
    Socket::open(NETLINK_ROUTE)
}

/// The index of link `name`, `None` if it does not exist.
pub(super) fn link_index(sock: &mut Socket, name: &str) -> io::Result<Option<u32>> {
    // A dump filtered by name would need strict checking; one GETLINK by name is one round trip.
    let msg = LinkUnspec::new_with_name(name).build();
    match sock.get(
        RouteNetlinkMessage::GetLink(msg),
        &format!("looking up link {name}"),
    ) {
        Ok(Some(RouteNetlinkMessage::NewLink(link))) => Ok(Some(link.header.index)),
        Ok(_) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

fn add_address(
    sock: &mut Socket,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    on: &str,
) -> io::Result<()> {
    let msg = AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(addr, prefix)
        .build();
    match sock.request(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
        &format!("adding address {addr}/{prefix} to {on}"),
    ) {
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        r => r,
    }
}

pub(super) fn set_up(sock: &mut Socket, index: u32, name: &str) -> io::Result<()> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    sock.request(
        RouteNetlinkMessage::SetLink(msg),
        0,
        &format!("bringing {name} up"),
    )
}

/// Hairpin: with br_netfilter loaded, a pod's connection to a published port of its own host that
/// DNATs back to the same pod is bridged out of the port it came in on, which a bridge refuses
/// unless the port is in hairpin mode. Isolated: see [`PodLink`].
fn set_port_flags(sock: &mut Socket, port: u32, name: &str) -> io::Result<()> {
    sock.request(
        RouteNetlinkMessage::NewLink(
            LinkBridgePort::new(port)
                .hairpin(true)
                .isolated(!bridged_ipv4_is_filtered())
                .build(),
        ),
        0,
        &format!("setting hairpin and isolated mode on {name}"),
    )
}

/// The pod's routes (inside its namespace): the gateway on-link, and the default via it.
fn pod_routes(sock: &mut Socket, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
    let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gateway, 32)
        .scope(rtnetlink::packet_route::route::RouteScope::Link)
        .output_interface(index)
        .build();
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    for (route, what) in [
        (to_gateway, format!("adding the pod's route to {gateway}")),
        (
            default,
            format!("adding the pod's default route via {gateway}"),
        ),
    ] {
        match sock.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
            &what,
        ) {
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            r => r?,
        }
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == value => return Ok(()),
        _ => {}
    }
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))
}

/// Whether bridged IPv4 passes the iptables/nftables `ip` hooks in this network namespace
/// (`br_netfilter` loaded and `bridge-nf-call-iptables` on).
pub fn bridged_ipv4_is_filtered() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

/// Runs `f` with the calling thread inside the network namespace `netns`, and back.
///
/// On the calling thread rather than a helper thread: a thread handoff costs two scheduler
/// wake-ups, which measured 20-40 ms per pod on a loaded 2-core host against well under a
/// millisecond for two `setns` calls. `f` is synchronous, so nothing else runs on the thread in
/// between; if the way back fails the process aborts rather than go on in a pod's namespace.
fn in_netns<T>(netns: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let open = |p: &Path| {
        File::open(p).map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", p.display())))
    };
    let home = open(Path::new("/proc/thread-self/ns/net"))?;
    let target = open(netns)?;
    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("entering the network namespace {}: {e}", netns.display()),
        )
    })?;
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            if nix::sched::setns(&self.0, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                eprintln!("compose-fleet-agent: cannot return to the host's network namespace");
                std::process::abort();
            }
        }
    }
    let _back = Back(home);
    f()
}

impl NetKernel for Netlink {
    fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, subnet: Ipv4Net) -> io::Result<()> {
        let mut sock = route_socket()?;
        let index = match link_index(&mut sock, name)? {
            Some(i) => i,
            None => {
                let msg = LinkBridge::new(name).up().build();
                match sock.request(
                    RouteNetlinkMessage::NewLink(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &format!("creating bridge {name}"),
                ) {
                    Err(e) if is_errno(&e, libc::EEXIST) => {}
                    r => r?,
                }
                link_index(&mut sock, name)?.ok_or_else(|| {
                    io::Error::other(format!("bridge {name} vanished right after its creation"))
                })?
            }
        };
        set_bridge_mac(&mut sock, index, name, gateway)?;
        // The bridge's own link-local address needs no DAD either.
        let _ = write_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0");
        add_address(&mut sock, index, gateway, subnet.prefix(), name)?;
        set_up(&mut sock, index, name)
    }

    fn enable_forwarding(&self) -> io::Result<()> {
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    }

    fn attach_pod(&self, link: &PodLink) -> io::Result<()> {
        let mut sock = route_socket()?;
        let bridge = link_index(&mut sock, &link.bridge)?
            .ok_or_else(|| io::Error::other(format!("bridge {} does not exist", link.bridge)))?;
        let netns = File::open(&link.netns).map_err(|e| {
            io::Error::new(e.kind(), format!("opening {}: {e}", link.netns.display()))
        })?;
        // The pod end is created straight inside the pod's namespace, already named eth0.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(link.pod_if.clone())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let veth = || -> LinkMessage {
            LinkVeth::new(&link.host_if, &link.pod_if)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.clone())))
                .controller(bridge)
                .up()
                .build()
        };
        let what = format!("creating veth {} for {}", link.host_if, link.addr);
        match sock.request(
            RouteNetlinkMessage::NewLink(veth()),
            NLM_F_CREATE | NLM_F_EXCL,
            &what,
        ) {
            Err(e) if is_errno(&e, libc::EEXIST) => {
                // A pair left by a crashed agent, or the pod end's name taken in the namespace.
                self.remove_link(&link.host_if)?;
                sock.request(
                    RouteNetlinkMessage::NewLink(veth()),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &what,
                )?;
            }
            r => r?,
        }
        drop(netns);
        let port = link_index(&mut sock, &link.host_if)?.ok_or_else(|| {
            io::Error::other(format!(
                "{} vanished right after its creation",
                link.host_if
            ))
        })?;
        set_port_flags(&mut sock, port, &link.host_if)?;
        forget_neighbour(&mut sock, bridge, link.addr)?;
        if let Some(alias) = &link.alias {
            // Before the pod's end has the address: a link whose address is in use always
            // names its pod, for an agent that restarts before `network.json` is written.
            let mut msg = LinkUnspec::new_with_index(port).build();
            msg.attributes.push(LinkAttribute::IfAlias(alias.clone()));
            sock.request(
                RouteNetlinkMessage::SetLink(msg),
                0,
                &format!("naming pod {alias:?} on {}", link.host_if),
            )?;
        }
        let (pod_if, addr, gateway) = (link.pod_if.clone(), link.addr, link.gateway);
        in_netns(&link.netns, || {
            // Before the link goes up: DAD would hold the pod's IPv6 link-local for 1-3 s.
            let _ = write_sysctl(&format!("/proc/sys/net/ipv6/conf/{pod_if}/accept_dad"), "0");
            let mut sock = route_socket()?;
            let index = link_index(&mut sock, &pod_if)?
                .ok_or_else(|| io::Error::other(format!("{pod_if} did not arrive in the pod")))?;
            // A /32: no on-link route to the subnet, every packet goes to the gateway.
            add_address(&mut sock, index, addr, 32, &pod_if)?;
            set_up(&mut sock, index, &pod_if)?;
            pod_routes(&mut sock, index, gateway)
        })
    }

    fn remove_link(&self, name: &str) -> io::Result<()> {
        let mut sock = route_socket()?;
        let msg = LinkUnspec::new_with_name(name).build();
        match sock.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("deleting link {name}"),
        ) {
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            r => r,
        }
    }

    fn replace_rules(&self, rules: &Ruleset, previous: Option<&Ruleset>) -> io::Result<()> {
        nft_batch(nft::sync_batch(rules, previous))?;
        // The fast path only ever takes what these rules accept untracked, so it follows them.
        if let Some(gateway) = rules.subnet.gateway() {
            let params = fastpath::Params {
                fleet: rules.fleet,
                gateway,
            };
            fastpath::sync(Some((params, &rules.isolation)), fast_path_devices);
        }
        Ok(())
    }

    fn remove_rules(&self) -> io::Result<()> {
        fastpath::sync(None, fast_path_devices);
        nft_batch(nft::delete_batch())
    }

    fn set_routes(&self, routes: &[PeerRoute]) -> io::Result<()> {
        let mut sock = route_socket()?;
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let present: Vec<RouteMessage> = sock
            .dump(RouteNetlinkMessage::GetRoute(dump), "listing routes")?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL) =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect();
        for route in routes {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(route.subnet.network(), route.subnet.prefix())
                .gateway(route.via)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build();
            sock.request(
                RouteNetlinkMessage::NewRoute(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
                &format!("routing {} via {}", route.subnet, route.via),
            )?;
        }
        for old in present {
            let dst = old.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(
                    rtnetlink::packet_route::route::RouteAddress::Inet(ip),
                ) => Some(*ip),
                _ => None,
            });
            let wanted = dst.is_some_and(|ip| {
                routes.iter().any(|r| {
                    r.subnet.network() == ip
                        && r.subnet.prefix() == old.header.destination_prefix_length
                })
            });
            if !wanted {
                match sock.request(
                    RouteNetlinkMessage::DelRoute(old),
                    0,
                    "removing a stale pod route",
                ) {
                    Err(e) if is_errno(&e, libc::ESRCH) => {}
                    r => r?,
                }
            }
        }
        fastpath::refresh(fast_path_devices);
        Ok(())
    }

    fn refresh_pod(&self, link: &PodLink) -> io::Result<bool> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
        let mut sock = route_socket()?;
        let Some(port) = link_index(&mut sock, &link.host_if)? else {
            return Ok(false);
        };
        set_port_flags(&mut sock, port, &link.host_if)?;
        let (pod_if, addr, gateway) = (link.pod_if.clone(), link.addr, link.gateway);
        in_netns(&link.netns, || {
            let mut sock = route_socket()?;
            let Some(index) = link_index(&mut sock, &pod_if)? else {
                return Ok(false);
            };
            let old: Vec<AddressMessage> = sock
                .dump(
                    RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                    "listing the pod's addresses",
                )?
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewAddress(a)
                        if a.header.index == index
                            && a.header.prefix_len != 32
                            && a.attributes.iter().any(|at| {
                                matches!(at, AddressAttribute::Local(std::net::IpAddr::V4(ip)) if *ip == addr)
                            }) =>
                    {
                        Some(a)
                    }
                    _ => None,
                })
                .collect();
            if old.is_empty() {
                return Ok(false);
            }
            // The /32 and the route to the gateway first, so the address never leaves the pod.
            add_address(&mut sock, index, addr, 32, &pod_if)?;
            pod_routes(&mut sock, index, gateway)?;
            for a in old {
                match sock.request(
                    RouteNetlinkMessage::DelAddress(a),
                    0,
                    &format!("removing the pod's old subnet address {addr}"),
                ) {
                    Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => {}
                    r => r?,
                }
            }
            // Deleting the subnet address may take the default route with it.
            pod_routes(&mut sock, index, gateway)?;
            Ok(true)
        })
    }

    fn pod_links(&self) -> io::Result<Vec<HostLink>> {
        let mut sock = route_socket()?;
        let links = sock.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "listing the host's links",
        )?;
        Ok(links
            .into_iter()
            .filter_map(|m| {
                let RouteNetlinkMessage::NewLink(link) = m else {
                    return None;
                };
                let mut name = None;
                let mut alias = None;
                for a in link.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n),
                        LinkAttribute::IfAlias(a) => alias = Some(a),
                        _ => {}
                    }
                }
                let name = name.filter(|n| n.starts_with("cfp"))?;
                Some(HostLink { name, alias })
            })
            .collect())
    }

    fn forward_drops(&self) -> io::Result<Vec<ForwardDrop>> {
        let mut sock = Socket::open(NETLINK_NETFILTER)?;
        let any = || NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0);
        let chains = sock.dump(
            NetfilterMessage::new(
                any(),
                NfTablesMessage::GetChain(ChainMessage { attributes: vec![] }),
            ),
            "listing nftables chains",
        )?;
        let rules = sock.dump(
            NetfilterMessage::new(
                any(),
                NfTablesMessage::GetRule(RuleMessage { attributes: vec![] }),
            ),
            "listing nftables rules",
        )?;
        let mut drops = find_forward_drops(&chains, &rules);
        if let Some(drop) = legacy_forward_drop()? {
            drops.push(drop);
        }
        Ok(drops)
    }
}

/// The FORWARD policy of the legacy (x_tables) `filter` table, which nftables cannot see: Docker
/// and older firewalls set it to DROP through `iptables-legacy`.
///
/// Only asked when `/proc/thread-self/net/ip_tables_names` lists `filter`: asking for a table that is not
/// there would make the kernel create it (and register its hooks) in this namespace.
fn legacy_forward_drop() -> io::Result<Option<ForwardDrop>> {
    let names = match std::fs::read_to_string("/proc/thread-self/net/ip_tables_names") {
        Ok(n) => n,
        Err(_) => return Ok(None), // no x_tables in this kernel
    };
    if !names.lines().any(|l| l.trim() == "filter") {
        return Ok(None);
    }
    // linux/netfilter_ipv4/ip_tables.h
    const IPT_SO_GET_INFO: libc::c_int = 64;
    const IPT_SO_GET_ENTRIES: libc::c_int = 65;
    const NF_INET_FORWARD: usize = 2;
    #[repr(C)]
    struct GetInfo {
        name: [u8; 32],
        valid_hooks: u32,
        hook_entry: [u32; 5],
        underflow: [u32; 5],
        num_entries: u32,
        size: u32,
    }
    /// `struct ipt_get_entries` up to its 8-aligned entry table.
    const ENTRIES_HEADER: usize = 40;
    /// `struct ipt_entry` and, after it, `struct xt_entry_target` (32 bytes) then the verdict.
    const VERDICT_AT: usize = 32;

    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let mut info = GetInfo {
        name: [0; 32],
        valid_hooks: 0,
        hook_entry: [0; 5],
        underflow: [0; 5],
        num_entries: 0,
        size: 0,
    };
    info.name[..6].copy_from_slice(b"filter");
    let mut len = std::mem::size_of::<GetInfo>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IPT_SO_GET_INFO,
            (&mut info as *mut GetInfo).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Ok(None);
    }
    if info.valid_hooks & (1 << NF_INET_FORWARD) == 0 || info.size > 64 << 20 {
        return Ok(None);
    }
    let mut buf = vec![0u8; ENTRIES_HEADER + info.size as usize];
    buf[..6].copy_from_slice(b"filter");
    buf[32..36].copy_from_slice(&info.size.to_ne_bytes());
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IPT_SO_GET_ENTRIES,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Ok(None);
    }
    let entry = ENTRIES_HEADER + info.underflow[NF_INET_FORWARD] as usize;
    let read_u16 = |at: usize| {
        buf.get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let Some(target_offset) = read_u16(entry + 88) else {
        return Ok(None);
    };
    let at = entry + target_offset as usize + VERDICT_AT;
    let Some(verdict) = buf
        .get(at..at + 4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    else {
        return Ok(None);
    };
    // A standard target's verdict is `-NF_DROP - 1` for DROP.
    Ok((verdict == -1).then(|| ForwardDrop {
        family: "ip",
        table: "filter".into(),
        chain: "FORWARD".into(),
        owner: "iptables-legacy",
        how: "policy drop",
    }))
}

/// Forward-hook base chains outside our table whose policy drops, or that hold a rule ending in
/// drop or reject.
pub fn find_forward_drops(
    chains: &[NetfilterMessage],
    rules: &[NetfilterMessage],
) -> Vec<ForwardDrop> {
    use netlink_packet_netfilter::NetfilterMessageInner;
    let mut names_by_table: std::collections::BTreeMap<(u8, String), Vec<String>> =
        Default::default();
    let mut forward = Vec::new();
    for m in chains {
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewChain(c)) = &m.inner else {
            continue;
        };
        let family = u8::from(m.header.family);
        let (mut table, mut name, mut is_forward, mut policy) =
            (String::new(), String::new(), false, None);
        for a in &c.attributes {
            match a {
                ChainAttribute::Table(t) => table = t.clone(),
                ChainAttribute::Name(n) => name = n.clone(),
                ChainAttribute::Hook(h) => {
                    is_forward = h.iter().any(|h| {
                        matches!(h, Hook::Number(HookNumber::Inet(InetHookNumber::Forward)))
                    })
                }
                ChainAttribute::Policy(p) => policy = Some(*p),
                _ => {}
            }
        }
        names_by_table
            .entry((family, table.clone()))
            .or_default()
            .push(name.clone());
        if is_forward && table != nft::TABLE {
            forward.push((family, table, name, policy));
        }
    }
    let mut out = Vec::new();
    for (family, table, chain, policy) in forward {
        let how = if policy == Some(0) {
            Some("policy drop")
        } else if rules.iter().any(|m| rule_drops(m, family, &table, &chain)) {
            Some("a rule drops or rejects")
        } else {
            None
        };
        if let Some(how) = how {
            let names = names_by_table
                .get(&(family, table.clone()))
                .cloned()
                .unwrap_or_default();
            out.push(ForwardDrop {
                family: nft::family_name(family),
                owner: nft::owner_of(&table, &names),
                table,
                chain,
                how,
            });
        }
    }
    out
}

fn rule_drops(m: &NetfilterMessage, family: u8, table: &str, chain: &str) -> bool {
    use netlink_packet_netfilter::NetfilterMessageInner;
    let NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(r)) = &m.inner else {
        return false;
    };
    if u8::from(m.header.family) != family {
        return false;
    }
    let mut here = (false, false);
    let mut drops = false;
    for a in &r.attributes {
        match a {
            RuleAttribute::Table(t) => here.0 = t == table,
            RuleAttribute::Chain(c) => here.1 = c == chain,
            RuleAttribute::Expressions(list) => drops = list.iter().any(expression_drops),
            _ => {}
        }
    }
    here.0 && here.1 && drops
}

fn expression_drops(e: &ListAttribute<ExpressionAttribute>) -> bool {
    let ListAttribute::Element(attrs) = e else {
        return false;
    };
    attrs.iter().any(|a| match a {
        ExpressionAttribute::Name(n) => n == "reject",
        ExpressionAttribute::Data(Expressions::Immediate(imm)) => imm.iter().any(|i| {
            matches!(i, Immediate::Data(DataAttribute::Verdict(v))
                if v.iter().any(|v| matches!(v, VerdictAttribute::Code(Verdict::Other(0)))))
        }),
        _ => false,
    })
}

fn nft_batch(steps: Vec<nft::Step>) -> io::Result<()> {
    let mut sock = Socket::open(NETLINK_NETFILTER)?;
    let names: Vec<String> = steps.iter().map(|s| s.2.clone()).collect();
    let messages = steps.into_iter().map(|(m, flags, _)| (m, flags)).collect();
    sock.transact(messages, Some(nft::framing()), &|i| {
        format!(
            "nftables: {}",
            names.get(i).map(String::as_str).unwrap_or("batch")
        )
    })
}

/// A fake kernel that records each call as one line, for unit tests of the call order.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Mutex<Vec<String>>,
    /// Calls whose line starts with this fail with an error.
    pub fail: Mutex<Option<String>>,
    pub drops: Vec<ForwardDrop>,
    /// The pods' host ends made and not removed, with their aliases.
    pub links: Mutex<std::collections::BTreeMap<String, Option<String>>>,
}

impl Recording {
    fn record(&self, line: String) -> io::Result<()> {
        let fail = self.fail.lock().map(|f| f.clone()).unwrap_or(None);
        let failing = fail.is_some_and(|f| line.starts_with(&f));
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(line.clone());
        }
        if failing {
            return Err(io::Error::other(format!("injected failure: {line}")));
        }
        Ok(())
    }

    /// The calls so far, and forgets them.
    pub fn take(&self) -> Vec<String> {
        self.calls
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

impl NetKernel for Recording {
    fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, subnet: Ipv4Net) -> io::Result<()> {
        self.record(format!("bridge {name} {gateway}/{}", subnet.prefix()))
    }
    fn enable_forwarding(&self) -> io::Result<()> {
        self.record("forwarding on".into())
    }
    fn attach_pod(&self, l: &PodLink) -> io::Result<()> {
        self.record(format!(
            "veth {}:{} master {} addr {}/32 via {}",
            l.host_if, l.pod_if, l.bridge, l.addr, l.gateway
        ))?;
        if let Ok(mut links) = self.links.lock() {
            links.insert(l.host_if.clone(), l.alias.clone());
        }
        Ok(())
    }
    fn remove_link(&self, name: &str) -> io::Result<()> {
        if let Ok(mut links) = self.links.lock() {
            links.remove(name);
        }
        self.record(format!("del link {name}"))
    }
    fn replace_rules(&self, rules: &Ruleset, _previous: Option<&Ruleset>) -> io::Result<()> {
        let published: Vec<String> = rules.published.iter().map(nft::describe).collect();
        let networks: Vec<String> = rules
            .isolation
            .networks
            .iter()
            .map(|(n, m)| {
                let m: Vec<String> = m.iter().map(|a| a.to_string()).collect();
                format!("{n}: {}", m.join(" "))
            })
            .collect();
        let no_egress: Vec<String> = rules
            .isolation
            .no_egress
            .iter()
            .map(|a| a.to_string())
            .collect();
        self.record(format!(
            "nft replace masq {} [{}] networks [{}]{}",
            rules.fleet,
            published.join(", "),
            networks.join(", "),
            if no_egress.is_empty() {
                String::new()
            } else {
                format!(" no egress [{}]", no_egress.join(" "))
            }
        ))
    }
    fn remove_rules(&self) -> io::Result<()> {
        self.record("nft delete table".into())
    }
    fn set_routes(&self, routes: &[PeerRoute]) -> io::Result<()> {
        let r: Vec<String> = routes
            .iter()
            .map(|r| format!("{} via {}", r.subnet, r.via))
            .collect();
        self.record(format!("routes [{}]", r.join(", ")))
    }
    fn forward_drops(&self) -> io::Result<Vec<ForwardDrop>> {
        Ok(self.drops.clone())
    }
    fn refresh_pod(&self, l: &PodLink) -> io::Result<bool> {
        self.record(format!("refresh {} addr {}/32", l.host_if, l.addr))?;
        Ok(false)
    }
    fn pod_links(&self) -> io::Result<Vec<HostLink>> {
        let links = self.links.lock().map(|l| l.clone()).unwrap_or_default();
        Ok(links
            .into_iter()
            .map(|(name, alias)| HostLink { name, alias })
            .collect())
    }
}
