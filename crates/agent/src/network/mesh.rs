//! Between hosts: which peers are routed directly (host-gw: on this host's L2 segment) and which
//! through the encrypted WireGuard mesh, and the mesh device itself while the host has pods.
//!
//! ```text
//!  configure(HostNetwork) ─▶ decide: per peer host-gw | wireguard ─▶ mesh.json (the plan)
//!                            host-gw peers ─▶ routes via the peer (kernel.rs)
//!  first pod / agent start ─▶ ensure_up: device cfwg0 (MTU from the egress link), routes
//!                            `subnet dev cfwg0` (protocol 214), packets moved by wg::userspace
//!  last pod removed ───────▶ down: the device and its routes are gone
//! ```
//!
//! The mode of a pair is decided here, on the host, because only the host sees whether a peer's
//! address is on-link (its route has no gateway); the inventory may force it fleet-wide.
//!
//! The device is kernel WireGuard where the kernel has it (`wg::kernel`: a `wireguard` link
//! configured over generic netlink, which outlives the agent), else the agent's userspace
//! device on a TUN (`wg::userspace`, which dies with the agent and comes back at its start).
//! Which one runs is reported in `Hello` (`MeshFacts::device`) and shown by `hosts`.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::netlink::{errno, is_errno};
use super::wg::kernel::{Choice, Existing, Genl};
use super::wg::{self, userspace::PeerConfig};
use crate::proto::mesh::{DeviceKind, Link, MeshFacts, Mode, PeerHealth};
use crate::proto::net::Ipv4Net;
use crate::proto::HostNetwork;
use crate::store::write_atomic;

/// The mesh device on every host.
pub const DEVICE: &str = "cfwg0";
/// Routes through the mesh carry this protocol number (host-gw routes carry 213).
pub const ROUTE_PROTOCOL: u8 = 214;
const PLAN_FILE: &str = "mesh.json";
/// The kind of the device that ran last (`kernel` or `userspace`), for `hosts` while it is down.
const DEVICE_FILE: &str = "mesh-device";
/// WireGuard's encapsulation over IPv4 or IPv6 (Uncloud's figure): 1500 → 1420.
const OVERHEAD: u32 = 80;
/// IPv6's minimum: no smaller MTU is useful.
const MIN_MTU: u32 = 1280;

/// One peer as this host reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPeer {
    pub host: String,
    pub subnet: Ipv4Net,
    pub link: Link,
    /// Its address: the next hop (host-gw) or the endpoint's address (mesh).
    pub via: Ipv4Addr,
    /// Set for mesh peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
}

/// What the CLI last decided for this host, as resolved here; kept in `mesh.json` so that the
/// device comes back after an agent restart without the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub port: u16,
    #[serde(default)]
    pub peers: Vec<PlannedPeer>,
}

impl Plan {
    fn mesh_peers(&self) -> Vec<PeerConfig> {
        self.peers
            .iter()
            .filter(|p| p.link == Link::Wireguard)
            .filter_map(|p| {
                Some(PeerConfig {
                    host: p.host.clone(),
                    public_key: wg::keys::decode(p.public_key.as_deref()?)?,
                    endpoint: p.endpoint?,
                    allowed: p.subnet,
                })
            })
            .collect()
    }

    /// The routes host-gw peers need.
    pub fn host_gw(&self) -> Vec<super::PeerRoute> {
        self.peers
            .iter()
            .filter(|p| p.link == Link::HostGw)
            .map(|p| super::PeerRoute {
                subnet: p.subnet,
                via: p.via,
            })
            .collect()
    }
}

/// Decides each peer's link. A peer without a usable key in `net.mesh` (no mesh at all, or an
/// agent too old to report a key) is host-gw; otherwise the inventory's mode, and for `auto`
/// whether its address is on-link.
pub fn decide(
    net: &HostNetwork,
    mut on_link: impl FnMut(Ipv4Addr) -> io::Result<bool>,
) -> io::Result<Plan> {
    let mut plan = Plan {
        port: net.mesh.as_ref().map_or(0, |m| m.port),
        peers: Vec::new(),
    };
    for p in net.peers.iter().filter(|p| p.subnet != net.subnet) {
        let mesh_peer = net.mesh.as_ref().and_then(|m| {
            let peer = m.peers.iter().find(|mp| mp.host == p.host)?;
            wg::keys::decode(&peer.public_key)?;
            Some((m.mode, peer))
        });
        let link = match mesh_peer {
            None | Some((Mode::HostGw, _)) => Link::HostGw,
            Some((Mode::Wireguard, _)) => Link::Wireguard,
            Some((Mode::Auto, _)) => {
                if on_link(p.via)? {
                    Link::HostGw
                } else {
                    Link::Wireguard
                }
            }
        };
        let (public_key, endpoint) = match (link, mesh_peer) {
            (Link::Wireguard, Some((_, mp))) => (Some(mp.public_key.clone()), Some(mp.endpoint)),
            _ => (None, None),
        };
        plan.peers.push(PlannedPeer {
            host: p.host.clone(),
            subnet: p.subnet,
            link,
            via: p.via,
            public_key,
            endpoint,
        });
    }
    Ok(plan)
}

/// The kernel side of the mesh, behind a trait so that the decisions are unit-tested.
pub trait MeshKernel: Send + Sync {
    /// Whether `addr` is reached without a gateway (same L2 segment).
    fn on_link(&self, addr: Ipv4Addr) -> io::Result<bool>;
    /// Brings the device up with `peers` and routes their subnets through it.
    fn start(
        &self,
        state_dir: &Path,
        port: u16,
        peers: &[PeerConfig],
    ) -> io::Result<Box<dyn MeshDevice>>;
    /// Removes a mesh device this process does not hold: a kernel device left by an earlier
    /// agent (it outlives its agent) when the host's last pod goes.
    fn remove_leftover(&self) {}
}

/// A running mesh device. [`remove`](MeshDevice::remove) takes it and its routes down; merely
/// dropping it (the agent exits) leaves a kernel device running for the pods, while a userspace
/// device cannot outlive its process.
pub trait MeshDevice: Send {
    /// Changes the peers (and routes) in place, keeping sessions with peers that stay.
    fn set_peers(&self, peers: &[PeerConfig]) -> io::Result<()>;
    fn handshake_ages(&self) -> BTreeMap<String, Option<Duration>>;
    fn kind(&self) -> DeviceKind;
    /// Removes the device (the host's last pod is gone).
    fn remove(self: Box<Self>) {}
}

type Device = Mutex<Option<Box<dyn MeshDevice>>>;
type Slot = Arc<Device>;

/// The running devices of this process, by state dir, for `Hello`'s facts (answered by the
/// daemon, which runs them).
static RUNNING: Mutex<Vec<(PathBuf, Weak<Device>)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host's mesh: its plan and, while the host has pods, its device.
pub struct Mesh {
    kernel: Arc<dyn MeshKernel>,
    state_dir: PathBuf,
    plan: Mutex<Plan>,
    device: Slot,
}

impl Mesh {
    pub fn open(state_dir: &Path, kernel: Arc<dyn MeshKernel>) -> Mesh {
        let plan = read_plan(state_dir).unwrap_or_default();
        let device: Slot = Arc::new(Mutex::new(None));
        let mut running = lock(&RUNNING);
        running.retain(|(_, w)| w.strong_count() > 0);
        running.push((state_dir.to_path_buf(), Arc::downgrade(&device)));
        Mesh {
            kernel,
            state_dir: state_dir.to_path_buf(),
            plan: Mutex::new(plan),
            device,
        }
    }

    /// Decides every peer's link and records the plan; updates a running device. Returns the
    /// host-gw routes.
    pub fn configure(&self, net: &HostNetwork) -> io::Result<Vec<super::PeerRoute>> {
        let plan = decide(net, |ip| self.kernel.on_link(ip))?;
        let mut current = lock(&self.plan);
        if *current != plan {
            let bytes = serde_json::to_vec_pretty(&plan).map_err(io::Error::other)?;
            write_atomic(&self.state_dir.join(PLAN_FILE), &bytes, 0o600)?;
            *current = plan.clone();
            let mut device = lock(&self.device);
            if device.is_some() {
                let peers = plan.mesh_peers();
                if peers.is_empty() {
                    if let Some(d) = device.take() {
                        d.remove();
                    }
                } else if let Some(d) = device.as_ref() {
                    d.set_peers(&peers)?;
                }
            }
        }
        Ok(plan.host_gw())
    }

    /// Starts the device if the plan has mesh peers and it is not running (first pod, or the
    /// agent restarted while pods ran).
    pub fn ensure_up(&self) -> io::Result<()> {
        let plan = lock(&self.plan).clone();
        let peers = plan.mesh_peers();
        let mut device = lock(&self.device);
        if device.is_some() || peers.is_empty() {
            return Ok(());
        }
        let started = self.kernel.start(&self.state_dir, plan.port, &peers)?;
        // Best effort: only `hosts` reads it, and the running device answers first.
        let _ = write_atomic(
            &self.state_dir.join(DEVICE_FILE),
            started.kind().as_str().as_bytes(),
            0o644,
        );
        *device = Some(started);
        Ok(())
    }

    /// Stops the device (the last pod is gone).
    pub fn down(&self) {
        match lock(&self.device).take() {
            Some(d) => d.remove(),
            None => self.kernel.remove_leftover(),
        }
    }
}

fn read_plan(state_dir: &Path) -> Option<Plan> {
    serde_json::from_slice(&std::fs::read(state_dir.join(PLAN_FILE)).ok()?).ok()
}

/// The mesh as `Hello` reports it: the public key (made now if the host has none) and each
/// peer's link, with handshake ages from the device this process runs.
pub fn facts(state_dir: &Path) -> Option<MeshFacts> {
    let public_key = match wg::keys::public_key(state_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("mesh: no WireGuard key: {e}");
            return None;
        }
    };
    let plan = read_plan(state_dir).unwrap_or_default();
    // The newest mesh of that dir (tests open several in one process).
    let live = lock(&RUNNING)
        .iter()
        .rev()
        .filter(|(dir, _)| dir == state_dir)
        .find_map(|(_, w)| w.upgrade());
    let (mut ages, mut running) = match live.as_ref().map(|slot| lock(slot)) {
        Some(guard) => match guard.as_ref() {
            Some(device) => (Some(device.handshake_ages()), Some(device.kind())),
            None => (None, None),
        },
        None => (None, None),
    };
    // A kernel device outlives the agent that made it: a new agent without pods (it has
    // opened no device) still reports the one the kernel runs, read-only.
    let recorded_kernel =
        std::fs::read_to_string(state_dir.join(DEVICE_FILE)).is_ok_and(|k| k.trim() == "kernel");
    if ages.is_none() && recorded_kernel {
        let peers = wg::kernel::Genl::open().and_then(|mut g| g.peers(DEVICE));
        if let Ok(kernel_peers) = peers {
            let configured = plan.mesh_peers();
            ages = Some(wg::kernel::handshake_ages(
                &configured,
                &kernel_peers,
                std::time::SystemTime::now(),
            ));
            running = Some(DeviceKind::Kernel);
        }
    }
    let device = running.or_else(|| {
        match std::fs::read_to_string(state_dir.join(DEVICE_FILE))
            .ok()?
            .trim()
        {
            "kernel" => Some(DeviceKind::Kernel),
            "userspace" => Some(DeviceKind::Userspace),
            _ => None,
        }
    });
    let peers = plan
        .peers
        .iter()
        .map(|p| PeerHealth {
            host: p.host.clone(),
            subnet: p.subnet,
            link: p.link,
            handshake_age_secs: ages
                .as_ref()
                .and_then(|a| a.get(&p.host).copied().flatten())
                .map(|d| d.as_secs()),
            device_up: p.link == Link::Wireguard && ages.is_some(),
        })
        .collect();
    Some(MeshFacts {
        public_key,
        peers,
        device,
    })
}

/// The MTU for the mesh over an egress link of `link_mtu`.
pub fn mesh_mtu(link_mtu: u32) -> u32 {
    link_mtu.saturating_sub(OVERHEAD).max(MIN_MTU)
}

/// The real kernel: netlink for routes and links, the userspace device for packets.
#[derive(Debug, Default)]
pub struct System;

/// The route the kernel would take to `addr`: (has a gateway, output link).
fn route_to(addr: Ipv4Addr) -> io::Result<(bool, Option<u32>)> {
    let mut sock = super::kernel::route_socket()?;
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, 32)
        .build();
    let what = format!("looking up the route to {addr}");
    match sock.get(RouteNetlinkMessage::GetRoute(msg), &what)? {
        Some(RouteNetlinkMessage::NewRoute(r)) => {
            let gateway = r
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_)));
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            Ok((gateway, oif))
        }
        _ => Err(io::Error::other(format!("{what}: no answer"))),
    }
}

fn link_mtu(index: u32) -> io::Result<Option<u32>> {
    let mut sock = super::kernel::route_socket()?;
    let msg = LinkUnspec::new_with_index(index).build();
    match sock.get(
        RouteNetlinkMessage::GetLink(msg),
        "looking up the egress link",
    )? {
        Some(RouteNetlinkMessage::NewLink(l)) => Ok(l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })),
        _ => Ok(None),
    }
}

/// Makes our mesh routes exactly `subnets` through link `index`.
fn sync_routes(index: u32, subnets: &[Ipv4Net]) -> io::Result<()> {
    let mut sock = super::kernel::route_socket()?;
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
    for s in subnets {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(s.network(), s.prefix())
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        sock.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("routing {s} through {DEVICE}"),
        )?;
    }
    for old in present {
        let dst = old.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        let wanted = dst.is_some_and(|ip| {
            subnets
                .iter()
                .any(|s| s.network() == ip && s.prefix() == old.header.destination_prefix_length)
        });
        if !wanted {
            match sock.request(
                RouteNetlinkMessage::DelRoute(old),
                0,
                "removing a stale mesh route",
            ) {
                Err(e) if is_errno(&e, libc::ESRCH) => {}
                r => r?,
            }
        }
    }
    Ok(())
}

/// The userspace device with its link index (for routes).
struct UserspaceDevice {
    device: wg::userspace::Userspace,
    index: u32,
}

impl MeshDevice for UserspaceDevice {
    fn set_peers(&self, peers: &[PeerConfig]) -> io::Result<()> {
        self.device.set_peers(peers.to_vec());
        let subnets: Vec<Ipv4Net> = peers.iter().map(|p| p.allowed).collect();
        sync_routes(self.index, &subnets)
    }

    fn handshake_ages(&self) -> BTreeMap<String, Option<Duration>> {
        self.device.handshake_ages()
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Userspace
    }
}

/// A kernel WireGuard device: the kernel moves the packets; we hold its link index and the
/// peers we configured (to name the handshake ages by host).
struct KernelDevice {
    index: u32,
    peers: Mutex<Vec<PeerConfig>>,
}

impl KernelDevice {
    /// Makes the device's peers exactly `peers`, changing only those that differ.
    fn configure(
        &self,
        genl: &mut Genl,
        private_key: Option<[u8; 32]>,
        port: Option<u16>,
        peers: &[PeerConfig],
    ) -> io::Result<()> {
        let current = genl.peers(DEVICE)?;
        let changes = wg::kernel::peer_changes(&current, peers);
        if !changes.is_empty() || private_key.is_some() || port.is_some() {
            let messages = wg::kernel::set_device(
                DEVICE,
                private_key,
                port,
                changes,
                wg::kernel::MESSAGE_BUDGET,
            );
            genl.set(DEVICE, messages)?;
        }
        *lock(&self.peers) = peers.to_vec();
        let subnets: Vec<Ipv4Net> = peers.iter().map(|p| p.allowed).collect();
        sync_routes(self.index, &subnets)
    }
}

impl MeshDevice for KernelDevice {
    fn set_peers(&self, peers: &[PeerConfig]) -> io::Result<()> {
        let mut genl = Genl::open()?;
        self.configure(&mut genl, None, None, peers)
    }

    fn handshake_ages(&self) -> BTreeMap<String, Option<Duration>> {
        let peers = lock(&self.peers).clone();
        match Genl::open().and_then(|mut g| g.peers(DEVICE)) {
            Ok(kernel) => wg::kernel::handshake_ages(&peers, &kernel, std::time::SystemTime::now()),
            Err(e) => {
                eprintln!("mesh: reading {DEVICE}'s peers: {e}");
                peers.iter().map(|p| (p.host.clone(), None)).collect()
            }
        }
    }

    fn kind(&self) -> DeviceKind {
        DeviceKind::Kernel
    }

    fn remove(self: Box<Self>) {
        // Its routes go with it.
        if let Err(e) = delete_link(self.index) {
            eprintln!("mesh: removing {DEVICE}: {e}");
        }
    }
}

fn delete_link(index: u32) -> io::Result<()> {
    let mut sock = super::kernel::route_socket()?;
    let msg = LinkUnspec::new_with_index(index).build();
    match sock.request(
        RouteNetlinkMessage::DelLink(msg),
        0,
        &format!("deleting {DEVICE}"),
    ) {
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
        r => r,
    }
}

/// The kind of link `name` (`None`: no such link).
fn link_kind(name: &str) -> io::Result<Option<String>> {
    use rtnetlink::packet_route::link::LinkInfo;
    let mut sock = super::kernel::route_socket()?;
    let msg = LinkUnspec::new_with_name(name).build();
    match sock.get(
        RouteNetlinkMessage::GetLink(msg),
        &format!("looking up link {name}"),
    ) {
        Ok(Some(RouteNetlinkMessage::NewLink(l))) => Ok(Some(
            l.attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    }),
                    _ => None,
                })
                .unwrap_or_default(),
        )),
        Ok(_) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Brings up kernel WireGuard as device [`DEVICE`] with `peers`, or says why this kernel gets
/// the userspace device instead (`Ok(Err(reason))`). Errors other than "no WireGuard here"
/// are errors.
fn start_kernel(
    keys: &wg::KeyPair,
    port: u16,
    peers: &[PeerConfig],
    mtu: u32,
) -> io::Result<Result<KernelDevice, String>> {
    let kind = link_kind(DEVICE)?;
    let mut sock = super::kernel::route_socket()?;
    let created = match wg::kernel::existing(kind.as_deref()) {
        Existing::Userspace => {
            return Ok(Err(format!(
                "{DEVICE} exists as a link of kind {:?}",
                kind.unwrap_or_default()
            )))
        }
        Existing::Reuse => false,
        Existing::Create => {
            let msg = rtnetlink::LinkWireguard::new(DEVICE).build();
            let r = sock.request(
                RouteNetlinkMessage::NewLink(msg),
                netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
                &format!("creating the WireGuard device {DEVICE}"),
            );
            match wg::kernel::after_create(r.as_ref().err().and_then(errno)) {
                Ok(Choice::Kernel) => true,
                Ok(Choice::Userspace(why)) => return Ok(Err(why)),
                Err(_) => return r.map(|()| Err(String::new())),
            }
        }
    };
    let index = super::kernel::link_index(&mut sock, DEVICE)?
        .ok_or_else(|| io::Error::other(format!("{DEVICE} vanished after it was made")))?;
    let device = KernelDevice {
        index,
        peers: Mutex::new(Vec::new()),
    };
    let result = (|| -> io::Result<Result<(), String>> {
        let mut genl = match Genl::open() {
            Ok(g) => g,
            Err(e) => {
                return match wg::kernel::after_family(errno(&e)) {
                    Ok(Choice::Userspace(why)) => Ok(Err(why)),
                    _ => Err(e),
                }
            }
        };
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        sock.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("setting the MTU of {DEVICE}"),
        )?;
        // Up before `configure` routes through it: the kernel refuses a route whose device is
        // down (ENETDOWN). Without peers yet, it carries nothing meanwhile.
        super::kernel::set_up(&mut sock, index, DEVICE)?;
        let mut secret = keys.secret.to_bytes();
        let configured = device.configure(&mut genl, Some(secret), Some(port), peers);
        secret.fill(0);
        configured?;
        Ok(Ok(()))
    })();
    match result {
        Ok(Ok(())) => Ok(Ok(device)),
        other => {
            // A device made here and not usable is not left behind.
            if created {
                let _ = delete_link(index);
            }
            other.map(|r| r.map(|()| device))
        }
    }
}

impl MeshKernel for System {
    fn on_link(&self, addr: Ipv4Addr) -> io::Result<bool> {
        Ok(!route_to(addr)?.0)
    }

    fn remove_leftover(&self) {
        let leftover = || -> io::Result<()> {
            if wg::kernel::existing(link_kind(DEVICE)?.as_deref()) == Existing::Reuse {
                let mut sock = super::kernel::route_socket()?;
                if let Some(index) = super::kernel::link_index(&mut sock, DEVICE)? {
                    delete_link(index)?;
                }
            }
            Ok(())
        };
        if let Err(e) = leftover() {
            eprintln!("mesh: removing a leftover {DEVICE}: {e}");
        }
    }

    fn start(
        &self,
        state_dir: &Path,
        port: u16,
        peers: &[PeerConfig],
    ) -> io::Result<Box<dyn MeshDevice>> {
        let keys = wg::keys::load_or_create(state_dir)?;
        // The MTU of the link the first peer is reached through; 1500 when unknown.
        let egress = match peers.first().map(|p| p.endpoint.ip()) {
            Some(std::net::IpAddr::V4(ip)) => route_to(ip)?.1,
            _ => None,
        };
        let link = match egress {
            Some(i) => link_mtu(i)?.unwrap_or(1500),
            None => 1500,
        };
        match start_kernel(&keys, port, peers, mesh_mtu(link))? {
            Ok(device) => return Ok(Box::new(device)),
            Err(why) => eprintln!("mesh: {why}: the userspace WireGuard device runs the mesh"),
        }
        let tun = wg::tun::Tun::create(DEVICE)?;
        let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).map_err(|e| {
            io::Error::new(e.kind(), format!("binding the mesh's UDP port {port}: {e}"))
        })?;
        let mut sock = super::kernel::route_socket()?;
        let index = super::kernel::link_index(&mut sock, DEVICE)?
            .ok_or_else(|| io::Error::other(format!("{DEVICE} vanished after it was made")))?;
        let msg = LinkUnspec::new_with_index(index)
            .mtu(mesh_mtu(link))
            .build();
        sock.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("setting the MTU of {DEVICE}"),
        )?;
        super::kernel::set_up(&mut sock, index, DEVICE)?;
        let subnets: Vec<Ipv4Net> = peers.iter().map(|p| p.allowed).collect();
        sync_routes(index, &subnets)?;
        let device = wg::userspace::Userspace::start(tun, udp, keys, peers.to_vec())?;
        Ok(Box::new(UserspaceDevice { device, index }))
    }
}

/// A fake for unit tests: `on_link` answers from a list, devices record their peers.
#[derive(Debug, Default)]
pub struct Recording {
    pub on_link: Vec<Ipv4Addr>,
    pub calls: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.calls))
    }
}

struct RecordingDevice(Arc<Mutex<Vec<String>>>);

fn describe(peers: &[PeerConfig]) -> String {
    let p: Vec<String> = peers
        .iter()
        .map(|p| format!("{} {} at {}", p.host, p.allowed, p.endpoint))
        .collect();
    p.join(", ")
}

impl MeshDevice for RecordingDevice {
    fn set_peers(&self, peers: &[PeerConfig]) -> io::Result<()> {
        lock(&self.0).push(format!("mesh peers [{}]", describe(peers)));
        Ok(())
    }
    fn handshake_ages(&self) -> BTreeMap<String, Option<Duration>> {
        BTreeMap::new()
    }
    fn kind(&self) -> DeviceKind {
        DeviceKind::Userspace
    }
}

impl Drop for RecordingDevice {
    fn drop(&mut self) {
        lock(&self.0).push("mesh down".into());
    }
}

impl MeshKernel for Recording {
    fn on_link(&self, addr: Ipv4Addr) -> io::Result<bool> {
        Ok(self.on_link.contains(&addr))
    }
    fn start(&self, _: &Path, port: u16, peers: &[PeerConfig]) -> io::Result<Box<dyn MeshDevice>> {
        lock(&self.calls).push(format!("mesh up :{port} [{}]", describe(peers)));
        Ok(Box::new(RecordingDevice(self.calls.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mesh::{MeshConfig, MeshPeer};
    use crate::proto::PeerSubnet;

    fn key(n: u8) -> String {
        let secret = boringtun::x25519::StaticSecret::from([n; 32]);
        wg::keys::encode(boringtun::x25519::PublicKey::from(&secret).as_bytes())
    }

    fn network(mode: Mode) -> HostNetwork {
        let peer = |host: &str, n: u8| PeerSubnet {
            host: host.into(),
            subnet: format!("10.213.{n}.0/24").parse().unwrap(),
            via: format!("10.250.{n}.1{n}").parse().unwrap(),
        };
        HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![peer("h1", 1), peer("h2", 2), peer("h3", 3), peer("old", 4)],
            mesh: Some(MeshConfig {
                mode,
                port: 51820,
                peers: ["h2", "h3"]
                    .iter()
                    .enumerate()
                    .map(|(i, h)| MeshPeer {
                        host: h.to_string(),
                        public_key: key(i as u8 + 2),
                        endpoint: format!("10.250.{}.1{}:51820", i + 2, i + 2)
                            .parse()
                            .unwrap(),
                    })
                    .collect(),
            }),
        }
    }

    fn links(plan: &Plan) -> Vec<String> {
        plan.peers
            .iter()
            .map(|p| format!("{} {}", p.host, p.link.as_str()))
            .collect()
    }

    #[test]
    fn auto_meshes_only_peers_that_are_not_on_link_and_have_a_key() {
        let on_link: Ipv4Addr = "10.250.2.12".parse().unwrap();
        let plan = decide(&network(Mode::Auto), |ip| Ok(ip == on_link)).unwrap();
        assert_eq!(
            links(&plan),
            ["h2 host-gw", "h3 wireguard", "old host-gw"],
            "h1 is this host; `old` reported no key"
        );
        assert_eq!(plan.host_gw().len(), 2);
        let mesh = plan.mesh_peers();
        assert_eq!(mesh.len(), 1);
        assert_eq!(mesh[0].endpoint, "10.250.3.13:51820".parse().unwrap());
    }

    #[test]
    fn the_inventory_forces_the_mode() {
        let never = |_| -> io::Result<bool> { panic!("a forced mode asks no route") };
        let plan = decide(&network(Mode::Wireguard), never).unwrap();
        assert_eq!(
            links(&plan),
            ["h2 wireguard", "h3 wireguard", "old host-gw"]
        );
        let plan = decide(&network(Mode::HostGw), never).unwrap();
        assert_eq!(links(&plan), ["h2 host-gw", "h3 host-gw", "old host-gw"]);
        let mut none = network(Mode::Auto);
        none.mesh = None;
        assert!(decide(&none, never).unwrap().mesh_peers().is_empty());
    }

    #[test]
    fn the_device_runs_while_pods_do_and_follows_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Arc::new(Recording::default());
        let mesh = Mesh::open(dir.path(), kernel.clone());
        let routes = mesh.configure(&network(Mode::Auto)).unwrap();
        assert_eq!(routes.len(), 1, "only `old` is routed host-gw");
        assert!(kernel.take().is_empty(), "no device without pods");
        mesh.ensure_up().unwrap();
        mesh.ensure_up().unwrap();
        assert_eq!(
            kernel.take(),
            ["mesh up :51820 [h2 10.213.2.0/24 at 10.250.2.12:51820, h3 10.213.3.0/24 at 10.250.3.13:51820]"]
        );
        // The same plan again changes nothing; a new one updates the running device in place.
        mesh.configure(&network(Mode::Auto)).unwrap();
        assert!(kernel.take().is_empty());
        let mut fewer = network(Mode::Auto);
        fewer.peers.retain(|p| p.host != "h3");
        mesh.configure(&fewer).unwrap();
        assert_eq!(
            kernel.take(),
            ["mesh peers [h2 10.213.2.0/24 at 10.250.2.12:51820]"]
        );
        // A new agent process finds the plan and brings the device back.
        drop(mesh);
        assert_eq!(kernel.take(), ["mesh down"]);
        let again = Mesh::open(dir.path(), kernel.clone());
        again.ensure_up().unwrap();
        assert_eq!(
            kernel.take(),
            ["mesh up :51820 [h2 10.213.2.0/24 at 10.250.2.12:51820]"]
        );
        again.down();
        assert_eq!(kernel.take(), ["mesh down"]);
        let facts = facts(dir.path()).expect("a key");
        assert!(wg::keys::decode(&facts.public_key).is_some());
        assert_eq!(
            facts.device,
            Some(DeviceKind::Userspace),
            "the device that ran last, while none runs"
        );
        let health: Vec<String> = facts
            .peers
            .iter()
            .map(|p| format!("{} {} {}", p.host, p.link.as_str(), p.health()))
            .collect();
        assert_eq!(health, ["h2 wireguard idle", "old host-gw ok"]);
    }

    #[test]
    fn the_mtu_leaves_room_for_wireguard() {
        assert_eq!(mesh_mtu(1500), 1420);
        assert_eq!(mesh_mtu(9000), 8920);
        assert_eq!(mesh_mtu(1300), MIN_MTU);
    }
}
