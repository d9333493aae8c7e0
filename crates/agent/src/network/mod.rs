//! Pod networking on a host: the pod subnet and addresses, one bridge, a veth per pod, routes to
//! other hosts' pods, and our nftables table (masquerade, published ports). All through netlink
//! in-process: hosts have no `ip`, `nft` or `wg`, and the agent runs none.
//!
//! Map:
//! - [`ipam`]: the address book (subnet, pod → address), pure.
//! - [`nft`]: our table as nf_tables netlink messages, pure.
//! - [`kernel`]: the [`NetKernel`] trait, its netlink implementation and a recording fake.
//! - [`netlink`]: the blocking netlink socket both families use.
//! - `persist`: `network.json` written off the attach path; each pod's record also in the kernel.
//! - `reap`: removed pods' veths deleted off the detach path.
//! - [`service`]: the pushed service map and local replica health; [`vip`]: its nftables rules;
//!   [`dns`]: the DNS server on the bridge address and the pods' `resolv.conf`/`hosts`.
//! - [`isolation`]: which pods may reach which (compose networks, projects, `internal`).
//! - [`notrack`]: plain pod-to-pod TCP and UDP kept out of conntrack; NATed pod-to-pod
//!   connections on reserved source ports, so that their replies stay tracked.
//! - [`mesh`], [`wg`]: host-gw or WireGuard per pair of hosts, and the userspace WireGuard device.
//!
//! ```text
//!  Apply(network: subnet, peers) ─▶ Network::configure ─▶ network.json, routes
//!  pod sandbox created ───────────▶ Network::attach ──▶ address, veth, nft table
//!  pod removed ───────────────────▶ Network::detach ──▶ veth gone, address freed;
//!                                                       last pod: table and bridge gone
//! ```
//!
//! The supervisor knows none of this beyond those calls.

pub mod dns;
pub mod fastpath;
pub mod ipam;
pub mod isolation;
pub mod kernel;
pub mod mesh;
pub mod netlink;
pub mod nft;
pub mod notrack;
mod persist;
mod reap;
pub mod service;
pub mod vip;
pub mod wg;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use ipam::{AddressBook, AddressError};
pub use kernel::{HostLink, NetKernel, PeerRoute, PodLink};

use crate::proto::net::Ipv4Net;
use crate::proto::service::DEFAULT_NETWORK;
use crate::proto::{HostNetwork, PodNetwork, PortMapping};

/// The host's bridge; every pod's veth is its port, and it holds the subnet's `.1`.
pub const BRIDGE: &str = "cfbr0";
/// The pod's end of its veth, inside the pod.
pub const POD_IF: &str = "eth0";
const STATE_FILE: &str = "network.json";
const SERVICES_FILE: &str = "services.json";

/// A failure of pod networking, worded for the user.
#[derive(Debug)]
pub enum NetError {
    Address(AddressError),
    /// A published port is not something we can publish.
    BadPort(String),
    /// A kernel call failed.
    Kernel(io::Error),
    /// Saving the address book failed.
    State(PathBuf, io::Error),
    /// A pushed service map is not something we can serve (netdns).
    Services(String),
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetError::Address(e) => e.fmt(f),
            NetError::BadPort(m) => f.write_str(m),
            NetError::Kernel(e) => e.fmt(f),
            NetError::State(p, e) => write!(f, "saving {}: {e}", p.display()),
            NetError::Services(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for NetError {}

impl From<AddressError> for NetError {
    fn from(e: AddressError) -> Self {
        NetError::Address(e)
    }
}

impl From<io::Error> for NetError {
    fn from(e: io::Error) -> Self {
        NetError::Kernel(e)
    }
}

/// What survives the agent: the address book, each pod's published ports and compose networks
/// (the nftables table is rebuilt from them after a restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    book: AddressBook,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ports: BTreeMap<String, Vec<PortMapping>>,
    /// The compose networks of each pod not only on the project's default network.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    networks: BTreeMap<String, Vec<String>>,
    /// Pods only on `internal: true` networks: nothing leaves the fleet from them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    no_egress: BTreeSet<String>,
}

impl Saved {
    /// The compose networks pod `key` is on (the project's default network when none is named).
    fn networks_of(&self, key: &str) -> Vec<String> {
        match self.networks.get(key) {
            Some(n) if !n.is_empty() => n.clone(),
            _ => vec![DEFAULT_NETWORK.to_string()],
        }
    }
}

/// The networks a pod is on, and whether all of them are internal.
fn pod_networks(net: &PodNetwork) -> (Vec<String>, bool) {
    let mut names = net.networks.clone();
    if names.is_empty() {
        names.push(DEFAULT_NETWORK.to_string());
    }
    names.sort();
    names.dedup();
    let internal = names.iter().all(|n| net.internal.contains(n));
    (names, internal)
}

/// The host's pod network.
pub struct Network {
    kernel: Arc<dyn NetKernel>,
    file: PathBuf,
    saved: Mutex<Saved>,
    /// Writes `saved` to `file`; an attach does not wait for it (see [`persist`]).
    persist: persist::Persist,
    /// Deletes removed pods' veths; a detach does not wait for it (see [`reap`]).
    reaper: reap::Reaper,
    /// The rules last written to the kernel by this process. A pod without published ports
    /// changes nothing in them, and skipping the batch keeps attach cheap: every nf_tables
    /// commit that drops rules makes the next one wait for an RCU grace period (measured 4-28 ms
    /// on a loaded 2-core host, against 0.2 ms for the batch itself).
    rules: Mutex<Option<nft::Ruleset>>,
    /// The bridge was set up by this process (and not removed since): later pods skip the
    /// three round trips that check it.
    bridge_ready: std::sync::atomic::AtomicBool,
    /// The service map (saved in `services.json`) and local replica health.
    services: Mutex<service::Registry>,
    /// The WireGuard mesh to hosts that are not on-link; its device runs while pods do.
    mesh: mesh::Mesh,
}

fn key(project: &str, pod: &str) -> String {
    format!("{project}/{pod}")
}

/// The host end of a pod's veth: named after the address's host part, so it is unique on the
/// host, fits IFNAMSIZ, and is found again from the address book alone.
pub fn host_if(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("cfp{}", o[3])
}

/// The published ports of one pod, checked.
fn published(pod: Ipv4Addr, ports: &[PortMapping]) -> Result<Vec<nft::Published>, NetError> {
    ports
        .iter()
        .map(|p| {
            let proto = nft::Proto::parse(&p.protocol).ok_or_else(|| {
                NetError::BadPort(format!(
                    "port {}:{} has protocol {:?}; only tcp and udp can be published",
                    p.published, p.target, p.protocol
                ))
            })?;
            let host_ip = match p.host_ip.as_deref() {
                None | Some("") | Some("0.0.0.0") => None,
                Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                    NetError::BadPort(format!(
                        "port {}:{} is published on {ip:?}, which is not an IPv4 address",
                        p.published, p.target
                    ))
                })?),
            };
            if p.published == 0 || p.target == 0 {
                return Err(NetError::BadPort(format!(
                    "port {}:{}: port 0 cannot be published",
                    p.published, p.target
                )));
            }
            Ok(nft::Published {
                host_ip,
                proto,
                port: p.published,
                pod,
                target: p.target,
            })
        })
        .collect()
}

/// The pod subnet recorded under `state_dir`, for `Hello` (without opening the network).
pub fn recorded_subnet(state_dir: &Path) -> Option<Ipv4Net> {
    let bytes = std::fs::read(state_dir.join(STATE_FILE)).ok()?;
    serde_json::from_slice::<Saved>(&bytes).ok()?.book.subnet
}

impl Network {
    /// Opens the host's network state under `state_dir` (`network.json`), creating nothing.
    pub fn open(state_dir: &Path, kernel: Arc<dyn NetKernel>) -> io::Result<Network> {
        let file = state_dir.join(STATE_FILE);
        let mut saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not valid: {e}", file.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e),
        };
        let persist = persist::Persist::new(file.clone());
        // Pods attached by an agent that stopped before writing them down.
        match kernel.pod_links() {
            Ok(links) => {
                if recover(&mut saved, &links) {
                    let seq = persist.submit(to_json(&file, &saved).map_err(io::Error::other)?);
                    persist.wait(seq)?;
                }
            }
            Err(e) => eprintln!("network: listing the pods' links: {e}"),
        }
        // A map that does not parse is dropped: the next deploy pushes it again.
        let services = std::fs::read(state_dir.join(SERVICES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let reaper_kernel = kernel.clone();
        Ok(Network {
            kernel,
            file,
            saved: Mutex::new(saved),
            persist,
            reaper: reap::Reaper::new(reaper_kernel),
            rules: Mutex::new(None),
            bridge_ready: Default::default(),
            services: Mutex::new(services),
            mesh: mesh::Mesh::open(state_dir, Arc::new(mesh::System)),
        })
    }

    /// The same network with another mesh kernel (unit tests use [`mesh::Recording`]).
    pub fn with_mesh_kernel(mut self, kernel: Arc<dyn mesh::MeshKernel>) -> Network {
        let dir = self
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.mesh = mesh::Mesh::open(&dir, kernel);
        self
    }

    /// Brings back what does not outlive the agent (the userspace mesh device) when pods run:
    /// the daemon calls it at start.
    pub fn resume(&self) -> Result<(), NetError> {
        if !self.lock().book.pods.is_empty() {
            self.mesh.ensure_up()?;
        }
        Ok(())
    }

    /// Brings the links of running pods attached by an older agent (a /24 address, a bridge
    /// port that is not isolated) to what `attach` makes now, in place: same address, so their
    /// connections survive. The daemon calls it at start with each pod's namespace
    /// (`netns_of(project, pod)`; `None`: the pod is gone). Returns the pods changed.
    pub fn refresh_pods(&self, netns_of: impl Fn(&str, &str) -> Option<PathBuf>) -> Vec<String> {
        let saved = self.lock().clone();
        let Some(gateway) = saved.book.subnet.and_then(|s| s.gateway()) else {
            return Vec::new();
        };
        let Some(subnet) = saved.book.subnet else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        for (k, addr) in &saved.book.pods {
            let Some((project, pod)) = k.split_once('/') else {
                continue;
            };
            let Some(netns) = netns_of(project, pod) else {
                continue;
            };
            let link = PodLink {
                netns,
                host_if: host_if(*addr),
                pod_if: POD_IF.to_string(),
                bridge: BRIDGE.to_string(),
                addr: *addr,
                subnet,
                gateway,
                alias: None,
            };
            match self.kernel.refresh_pod(&link) {
                Ok(true) => changed.push(k.clone()),
                Ok(false) => {}
                Err(e) => eprintln!("network: bringing pod {k}'s link up to date: {e}"),
            }
        }
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `saved` for `network.json` (call under the lock, so states queue in order);
    /// returns the number to [`wait`](Self::wait_saved) for.
    fn save_later(&self, saved: &Saved) -> Result<u64, NetError> {
        Ok(self.persist.submit(to_json(&self.file, saved)?))
    }

    fn wait_saved(&self, seq: u64) -> Result<(), NetError> {
        self.persist
            .wait(seq)
            .map_err(|e| NetError::State(self.file.clone(), e))
    }

    /// Writes `saved` to `network.json` and waits until it is on disk.
    fn save(&self, saved: &Saved) -> Result<(), NetError> {
        let seq = self.save_later(saved)?;
        self.wait_saved(seq)
    }

    /// Waits until removed pods' links are deleted and every change so far is in
    /// `network.json` (attach and detach do not wait for either).
    pub fn settle(&self) -> Result<(), NetError> {
        self.reaper.drain();
        self.flush()
    }

    /// Waits until every change so far is in `network.json` (attach does not wait for it).
    pub fn flush(&self) -> Result<(), NetError> {
        self.persist
            .flush()
            .map_err(|e| NetError::State(self.file.clone(), e))
    }

    /// The recorded pod subnet.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.lock().book.subnet
    }

    /// The address pod `project/pod` holds.
    pub fn address_of(&self, project: &str, pod: &str) -> Option<Ipv4Addr> {
        self.lock().book.pods.get(&key(project, pod)).copied()
    }

    /// Records the host's subnet (persisted before anything else) and sets the routes to the
    /// other hosts' pods. Returns warnings for the user: host firewalls that drop forwarded
    /// traffic.
    pub fn configure(&self, net: &HostNetwork) -> Result<Vec<String>, NetError> {
        {
            let mut saved = self.lock();
            let mut next = saved.clone();
            if next.book.set_subnet(net.fleet, net.subnet)? {
                self.save(&next)?;
                *saved = next;
            }
        }
        // Peers on this L2 are routed via their address; the others go through the mesh.
        let routes: Vec<PeerRoute> = self.mesh.configure(net)?;
        self.kernel.set_routes(&routes)?;
        if !self.lock().book.pods.is_empty() {
            self.mesh.ensure_up()?;
        }
        self.warnings()
    }

    /// Forward-chain drops by other firewalls, and a fast path the kernel refused, as sentences.
    pub fn warnings(&self) -> Result<Vec<String>, NetError> {
        let mut warnings: Vec<String> = self
            .kernel
            .forward_drops()?
            .into_iter()
            .map(|d| {
                format!(
                    "{d} drops forwarded packets: pods on this host cannot be reached from other \
                     hosts or reach them until it accepts traffic to and from the pod network"
                )
            })
            .collect();
        if let Some(why) = fastpath::off() {
            warnings.push(format!(
                "the network fast path is off ({why}): pod-to-pod traffic takes the slower \
                 nftables path"
            ));
        }
        Ok(warnings)
    }

    /// [`attach_to`](Self::attach_to) the project's default network.
    pub fn attach(
        &self,
        project: &str,
        pod: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Option<Ipv4Addr>, NetError> {
        self.attach_to(project, pod, netns, ports, &PodNetwork::default())
    }

    /// Gives pod `project/pod` an address and a veth in its namespace `netns`, publishes its
    /// ports and puts it on its compose networks (only pods sharing one reach it). `None` when
    /// the host has no subnet (no fleet network yet).
    pub fn attach_to(
        &self,
        project: &str,
        pod: &str,
        netns: &Path,
        ports: &[PortMapping],
        network: &PodNetwork,
    ) -> Result<Option<Ipv4Addr>, NetError> {
        let mut saved = self.lock();
        let Some(subnet) = saved.book.subnet else {
            return Ok(None);
        };
        let fleet = saved.book.fleet.unwrap_or(subnet);
        let gateway = subnet.gateway().ok_or(AddressError::BadSubnet(subnet))?;
        let k = key(project, pod);
        let mut next = saved.clone();
        let addr = next.book.allocate(&k)?;
        let (names, internal) = pod_networks(network);
        // Docker publishes no port of a container whose networks are all internal: nothing
        // outside reaches it, as nothing leaves it.
        let ports = if internal { &[][..] } else { ports };
        // Check the ports before the first side effect.
        check_conflicts(&k, &published(addr, ports)?, &saved)?;
        if ports.is_empty() {
            next.ports.remove(&k);
        } else {
            next.ports.insert(k.clone(), ports.to_vec());
        }
        if names == [DEFAULT_NETWORK] {
            next.networks.remove(&k);
        } else {
            next.networks.insert(k.clone(), names);
        }
        if internal {
            next.no_egress.insert(k.clone());
        } else {
            next.no_egress.remove(&k);
        }
        // The pod's record goes to the kernel with its link (the host end's alias), so the
        // address is not waited for on disk: an agent that restarts before the write reads it
        // back from there (`recover`). A record too long for an alias is on disk first.
        let record = persist::PodRecord {
            key: k.clone(),
            networks: next.networks.get(&k).cloned().unwrap_or_default(),
            internal,
            ports: ports.to_vec(),
        }
        .encode();
        if record.is_some() {
            self.save_later(&next)?;
        } else {
            self.save(&next)?;
        }
        *saved = next;
        let result = (|| -> Result<(), NetError> {
            use std::sync::atomic::Ordering::Relaxed;
            if !self.bridge_ready.load(Relaxed) {
                self.kernel.ensure_bridge(BRIDGE, gateway, subnet)?;
                self.kernel.enable_forwarding()?;
                self.bridge_ready.store(true, Relaxed);
            }
            self.mesh.ensure_up()?;
            // The same name of a removed pod may still be queued for deletion.
            self.reaper.wait_for(&host_if(addr));
            self.kernel.attach_pod(&PodLink {
                netns: netns.to_path_buf(),
                host_if: host_if(addr),
                pod_if: POD_IF.to_string(),
                bridge: BRIDGE.to_string(),
                addr,
                subnet,
                gateway,
                alias: record,
            })?;
            self.sync_rules(self.ruleset(fleet, subnet, &saved)?)?;
            Ok(())
        })();
        if let Err(e) = result {
            drop(saved);
            let _ = self.detach(project, pod);
            return Err(e);
        }
        Ok(Some(addr))
    }

    /// Removes pod `project/pod`'s veth, frees its address and unpublishes its ports; with the
    /// last pod gone, our nftables table and the bridge go too. A pod never attached is fine.
    pub fn detach(&self, project: &str, pod: &str) -> Result<(), NetError> {
        let mut saved = self.lock();
        let k = key(project, pod);
        let Some(addr) = saved.book.pods.get(&k).copied() else {
            return Ok(());
        };
        let mut next = saved.clone();
        next.book.release(&k);
        next.ports.remove(&k);
        next.networks.remove(&k);
        next.no_egress.remove(&k);
        // Neither waited for: a new agent's `recover` drops what the file holds of a pod whose
        // link is gone, and takes back one whose link outlived its removal.
        self.save_later(&next)?;
        *saved = next;
        // Deleting the host end deletes the pair, whether or not the namespace still exists.
        self.reaper.reap(host_if(addr))?;
        if saved.book.pods.is_empty() {
            self.reaper.drain();
            self.kernel.remove_rules()?;
            *self.rules.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.mesh.down();
            self.bridge_ready
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.kernel.remove_link(BRIDGE)?;
        } else if let Some(subnet) = saved.book.subnet {
            let fleet = saved.book.fleet.unwrap_or(subnet);
            self.sync_rules(self.ruleset(fleet, subnet, &saved)?)?;
        }
        Ok(())
    }

    /// Writes `rules` unless they are what this process last wrote.
    fn sync_rules(&self, rules: nft::Ruleset) -> Result<(), NetError> {
        let mut last = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() == Some(&rules) {
            return Ok(());
        }
        let previous = last.take();
        self.kernel.replace_rules(&rules, previous.as_ref())?;
        *last = Some(rules);
        Ok(())
    }
}

/// Refuses a port another pod (or this pod twice) already publishes: nftables would silently send
/// every connection to whichever rule comes first.
fn check_conflicts(pod: &str, new: &[nft::Published], saved: &Saved) -> Result<(), NetError> {
    let overlaps = |a: &nft::Published, b: &nft::Published| {
        a.proto == b.proto
            && a.port == b.port
            && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
    };
    for (i, p) in new.iter().enumerate() {
        if new[..i].iter().any(|q| overlaps(p, q)) {
            return Err(NetError::BadPort(format!(
                "pod {pod} publishes port {}/{} twice",
                p.port,
                p.proto.name()
            )));
        }
        for (other, ports) in &saved.ports {
            let Some(addr) = saved.book.pods.get(other) else {
                continue;
            };
            if other != pod && published(*addr, ports)?.iter().any(|q| overlaps(p, q)) {
                return Err(NetError::BadPort(format!(
                    "port {}/{} is already published on this host by pod {other}",
                    p.port,
                    p.proto.name()
                )));
            }
        }
    }
    Ok(())
}

fn to_json(file: &Path, saved: &Saved) -> Result<Vec<u8>, NetError> {
    serde_json::to_vec_pretty(saved)
        .map_err(|e| NetError::State(file.to_path_buf(), io::Error::other(e)))
}

/// Brings `saved` (the file, which attach and detach do not wait for) to what the kernel holds:
/// - a pod whose link names it (the host end's alias) is taken in: attached by an agent that
///   stopped before `network.json` was written. The kernel wins over the file: a link exists
///   only while its pod holds the address, so another pod the file says holds it is gone;
/// - a pod without a link is dropped: detached by an agent that stopped before the write (or
///   its namespace is gone, and the link with it). No pod holds its address in the kernel.
///
/// Returns whether anything changed.
fn recover(saved: &mut Saved, links: &[HostLink]) -> bool {
    let Some(subnet) = saved.book.subnet else {
        return false;
    };
    let gone: Vec<String> = saved
        .book
        .pods
        .iter()
        .filter(|(_, addr)| !links.iter().any(|l| l.name == host_if(**addr)))
        .map(|(k, _)| k.clone())
        .collect();
    let mut changed = !gone.is_empty();
    for k in &gone {
        saved.book.release(k);
        saved.ports.remove(k);
        saved.networks.remove(k);
        saved.no_egress.remove(k);
    }
    for link in links {
        let Some(n) = link
            .name
            .strip_prefix("cfp")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let (Some(addr), Some(record)) = (
            subnet.nth(n),
            link.alias.as_deref().and_then(persist::PodRecord::decode),
        ) else {
            continue;
        };
        if saved.book.pods.get(&record.key) == Some(&addr) {
            continue;
        }
        let stale: Vec<String> = saved
            .book
            .pods
            .iter()
            .filter(|(k, a)| **a == addr && **k != record.key)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale.iter().chain([&record.key]) {
            saved.book.release(k);
            saved.ports.remove(k);
            saved.networks.remove(k);
            saved.no_egress.remove(k);
        }
        saved.book.pods.insert(record.key.clone(), addr);
        if !record.ports.is_empty() {
            saved.ports.insert(record.key.clone(), record.ports);
        }
        if !record.networks.is_empty() {
            saved.networks.insert(record.key.clone(), record.networks);
        }
        if record.internal {
            saved.no_egress.insert(record.key);
        }
        changed = true;
    }
    changed
}

fn ruleset(fleet: Ipv4Net, subnet: Ipv4Net, saved: &Saved) -> Result<nft::Ruleset, NetError> {
    let mut all = Vec::new();
    for (k, ports) in &saved.ports {
        if let Some(addr) = saved.book.pods.get(k) {
            all.extend(published(*addr, ports)?);
        }
    }
    // This host's pods, on their networks; the service maps add the other hosts' pods.
    let mut isolation = isolation::Isolation::default();
    for (k, addr) in &saved.book.pods {
        let project = k.split_once('/').map_or(k.as_str(), |(p, _)| p);
        for n in saved.networks_of(k) {
            isolation
                .networks
                .entry(format!("{project}/{n}"))
                .or_default()
                .insert(*addr);
        }
        if saved.no_egress.contains(k) {
            isolation.no_egress.insert(*addr);
        }
    }
    Ok(nft::Ruleset {
        fleet,
        subnet,
        published: all,
        vips: Vec::new(),
        service_range: None,
        isolation,
    })
}

#[cfg(test)]
mod tests {
    use super::kernel::Recording;
    use super::*;
    use crate::proto::PeerSubnet;

    fn setup() -> (tempfile::TempDir, Arc<Recording>, Network) {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = Arc::new(Recording::default());
        let net = Network::open(dir.path(), kernel.clone()).expect("opens");
        (dir, kernel, net)
    }

    fn host_network() -> HostNetwork {
        HostNetwork {
            fleet: "10.213.0.0/16".parse().unwrap(),
            subnet: "10.213.1.0/24".parse().unwrap(),
            peers: vec![
                PeerSubnet {
                    host: "h1".into(),
                    subnet: "10.213.1.0/24".parse().unwrap(),
                    via: "10.250.0.11".parse().unwrap(),
                },
                PeerSubnet {
                    host: "h2".into(),
                    subnet: "10.213.2.0/24".parse().unwrap(),
                    via: "10.250.0.12".parse().unwrap(),
                },
            ],
            mesh: None,
        }
    }

    fn port(published: u16, target: u16, protocol: &str) -> PortMapping {
        PortMapping {
            host_ip: None,
            published,
            target,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn without_a_subnet_pods_get_no_network() {
        let (_d, kernel, net) = setup();
        assert_eq!(
            net.attach("p", "web-1", Path::new("/x"), &[]).unwrap(),
            None
        );
        assert!(kernel.take().is_empty());
    }

    #[test]
    fn configure_records_the_subnet_and_routes_to_the_other_hosts_only() {
        let (dir, kernel, net) = setup();
        net.configure(&host_network()).expect("configures");
        assert_eq!(kernel.take(), ["routes [10.213.2.0/24 via 10.250.0.12]"]);
        // Recorded on the host: a new agent process (or another laptop's Hello) sees it.
        let again = Network::open(dir.path(), kernel.clone()).unwrap();
        assert_eq!(again.subnet(), Some("10.213.1.0/24".parse().unwrap()));
    }

    #[test]
    fn attach_then_detach_sets_up_and_tears_down_in_order() {
        let (_d, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        kernel.take();
        let a = net
            .attach("p", "web-1", Path::new("/ns/web"), &[port(8080, 80, "tcp")])
            .unwrap();
        assert_eq!(a, Some("10.213.1.2".parse().unwrap()));
        let b = net
            .attach("p", "db-1", Path::new("/ns/db"), &[port(5353, 53, "udp")])
            .unwrap();
        assert_eq!(b, Some("10.213.1.3".parse().unwrap()));
        assert_eq!(
            kernel.take(),
            [
                "bridge cfbr0 10.213.1.1/24",
                "forwarding on",
                "veth cfp2:eth0 master cfbr0 addr 10.213.1.2/32 via 10.213.1.1",
                "nft replace masq 10.213.0.0/16 [fib daddr type local tcp dport 8080 dnat to 10.213.1.2:80] networks [p/default: 10.213.1.2]",
                "veth cfp3:eth0 master cfbr0 addr 10.213.1.3/32 via 10.213.1.1",
                "nft replace masq 10.213.0.0/16 [fib daddr type local udp dport 5353 dnat to 10.213.1.3:53, fib daddr type local tcp dport 8080 dnat to 10.213.1.2:80] networks [p/default: 10.213.1.2 10.213.1.3]",
            ]
        );
        net.detach("p", "web-1").unwrap();
        net.detach("p", "web-1").unwrap();
        // The link goes on the reaper's thread, maybe after the rules.
        net.settle().unwrap();
        let mut calls = kernel.take();
        calls.sort();
        assert_eq!(
            calls,
            [
                "del link cfp2",
                "nft replace masq 10.213.0.0/16 [fib daddr type local udp dport 5353 dnat to 10.213.1.3:53] networks [p/default: 10.213.1.3]",
            ]
        );
        net.detach("p", "db-1").unwrap();
        assert_eq!(
            kernel.take(),
            ["del link cfp3", "nft delete table", "del link cfbr0"]
        );
        assert_eq!(net.address_of("p", "db-1"), None);
    }

    fn on(networks: &[&str], internal: &[&str]) -> PodNetwork {
        PodNetwork {
            networks: networks.iter().map(|s| s.to_string()).collect(),
            internal: internal.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn pods_join_their_projects_networks_and_internal_only_pods_lose_egress() {
        let (dir, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        let ns = Path::new("/ns");
        net.attach_to("p", "web-1", ns, &[], &on(&["front", "back"], &["back"]))
            .unwrap();
        net.attach_to("p", "db-1", ns, &[], &on(&["back"], &["back"]))
            .unwrap();
        net.attach("q", "web-1", ns, &[]).unwrap();
        let last = kernel.take().pop().unwrap();
        assert_eq!(
            last,
            "nft replace masq 10.213.0.0/16 [] networks [p/back: 10.213.1.2 10.213.1.3, \
             p/front: 10.213.1.2, q/default: 10.213.1.4] no egress [10.213.1.3]"
        );
        // A restarted agent rebuilds the same rules from network.json.
        let again = Network::open(dir.path(), kernel.clone()).unwrap();
        let saved = again.lock().clone();
        let rules =
            super::ruleset(saved.book.fleet.unwrap(), net.subnet().unwrap(), &saved).unwrap();
        assert_eq!(rules.isolation.networks.len(), 3);
        assert_eq!(rules.isolation.no_egress.len(), 1);
        net.detach("p", "db-1").unwrap();
        net.settle().unwrap();
        let mut calls = kernel.take();
        calls.sort();
        assert_eq!(
            calls,
            [
                "del link cfp3",
                "nft replace masq 10.213.0.0/16 [] networks [p/back: 10.213.1.2, \
                 p/front: 10.213.1.2, q/default: 10.213.1.4]",
            ]
        );
    }

    /// A service map arriving while a pod is attached (`up` pushes maps as pods start) must not
    /// deadlock the two: both take the address book and the service registry.
    #[test]
    fn service_maps_and_attaches_at_the_same_time_never_deadlock() {
        let (_d, _kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        // One pod stays, so that every map rewrites the rules (book, then registry).
        net.attach("p", "db-1", Path::new("/x"), &[]).unwrap();
        let net = Arc::new(net);
        let (done, finished) = std::sync::mpsc::channel();
        let attacher = {
            let (net, done) = (net.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    net.attach("p", "web-1", Path::new("/x"), &[]).unwrap();
                    net.detach("p", "web-1").unwrap();
                }
                let _ = done.send("attach");
            })
        };
        let pusher = std::thread::spawn(move || {
            for _ in 0..1000 {
                net.set_services(crate::proto::service::ServiceMap {
                    project: "p".into(),
                    services: vec![],
                })
                .unwrap();
            }
            let _ = done.send("set_services");
        });
        for _ in 0..2 {
            finished
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("attach/detach and set_services deadlocked");
        }
        attacher.join().unwrap();
        pusher.join().unwrap();
    }

    #[test]
    fn ports_of_a_pod_only_on_internal_networks_are_not_published() {
        let (_d, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        kernel.take();
        let ports = [port(8080, 80, "tcp")];
        net.attach_to(
            "p",
            "db-1",
            Path::new("/ns/db"),
            &ports,
            &on(&["back"], &["back"]),
        )
        .unwrap();
        assert_eq!(
            kernel.take().last().map(String::as_str),
            Some(
                "nft replace masq 10.213.0.0/16 [] networks [p/back: 10.213.1.2] \
                 no egress [10.213.1.2]"
            ),
            "nothing published"
        );
        // On one network that is not internal too: published, as docker does.
        net.attach_to(
            "p",
            "web-1",
            Path::new("/ns/web"),
            &ports,
            &on(&["front", "back"], &["back"]),
        )
        .unwrap();
        let last = kernel.take().pop().unwrap();
        assert!(
            last.contains("[fib daddr type local tcp dport 8080 dnat to 10.213.1.3:80]"),
            "{last}"
        );
    }

    #[test]
    fn pods_of_an_older_agent_are_refreshed_in_place_when_their_namespace_exists() {
        let (_d, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        net.attach("p", "web-1", Path::new("/ns/web"), &[]).unwrap();
        net.attach("p", "gone-1", Path::new("/ns/gone"), &[])
            .unwrap();
        kernel.take();
        let changed = net.refresh_pods(|_, pod| (pod == "web-1").then(|| PathBuf::from("/ns/web")));
        assert_eq!(kernel.take(), ["refresh cfp2 addr 10.213.1.2/32"]);
        assert!(changed.is_empty(), "the fake changes nothing");
    }

    #[test]
    fn a_failed_attach_releases_the_address() {
        let (_d, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        *kernel.fail.lock().unwrap() = Some("veth".into());
        assert!(net.attach("p", "web-1", Path::new("/ns"), &[]).is_err());
        assert_eq!(net.address_of("p", "web-1"), None);
        *kernel.fail.lock().unwrap() = None;
        kernel.take();
        let again = net.attach("p", "web-1", Path::new("/ns"), &[]).unwrap();
        assert_eq!(again, Some("10.213.1.3".parse().unwrap()), "round robin");
    }

    /// The crash this guards against: an attach returned (its pod runs with the address) and
    /// the agent died before `network.json` was written. The new agent must not hand the
    /// address to another pod, and keeps the pod's ports and networks.
    #[test]
    fn an_attach_whose_write_was_lost_is_taken_back_from_the_kernel_after_a_restart() {
        let (dir, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        net.attach("p", "db-1", Path::new("/ns/db"), &[]).unwrap();
        net.flush().unwrap();
        let file = dir.path().join(STATE_FILE);
        let before = std::fs::read(&file).unwrap();
        let web = net
            .attach_to(
                "p",
                "web-1",
                Path::new("/ns/web"),
                &[port(8080, 80, "tcp")],
                &on(&["front"], &[]),
            )
            .unwrap()
            .unwrap();
        // The write the crash lost: the file as it was before the attach.
        drop(net);
        std::fs::write(&file, &before).unwrap();
        let again = Network::open(dir.path(), kernel.clone()).unwrap();
        assert_eq!(again.address_of("p", "web-1"), Some(web));
        let other = again
            .attach("p", "api-1", Path::new("/ns/api"), &[])
            .unwrap()
            .unwrap();
        assert_ne!(other, web);
        let err = again
            .attach("q", "x-1", Path::new("/ns/x"), &[port(8080, 81, "tcp")])
            .expect_err("8080 is still web-1's");
        assert!(err.to_string().contains("by pod p/web-1"), "{err}");
        let rules = kernel.take().pop().unwrap();
        assert!(rules.contains("p/front: 10.213.1.3"), "{rules}");
        // And the file has it again.
        again.flush().unwrap();
        let on_disk: Saved = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(on_disk.book.pods.get("p/web-1"), Some(&web));
    }

    /// A file older than the kernel may name a pod that is gone for an address another pod
    /// now holds: the link's record wins.
    #[test]
    fn the_link_of_an_address_wins_over_a_stale_file() {
        let mut saved = Saved::default();
        saved
            .book
            .set_subnet(
                "10.213.0.0/16".parse().unwrap(),
                "10.213.1.0/24".parse().unwrap(),
            )
            .unwrap();
        saved
            .book
            .pods
            .insert("p/old-1".into(), "10.213.1.7".parse().unwrap());
        saved
            .ports
            .insert("p/old-1".into(), vec![port(80, 80, "tcp")]);
        let links = [
            HostLink {
                name: "cfp7".into(),
                alias: Some("cf1 p/new-1 - i -".into()),
            },
            // An older agent's link (no alias) and a link of nobody's: nothing to take.
            HostLink {
                name: "cfp9".into(),
                alias: None,
            },
            HostLink {
                name: "cfpx".into(),
                alias: Some("cf1 p/odd-1 - - -".into()),
            },
        ];
        assert!(recover(&mut saved, &links));
        assert_eq!(
            saved.book.pods,
            BTreeMap::from([("p/new-1".to_string(), "10.213.1.7".parse().unwrap())])
        );
        assert!(saved.ports.is_empty());
        assert!(saved.no_egress.contains("p/new-1"));
        assert!(!recover(&mut saved, &links), "nothing more to take");
    }

    #[test]
    fn bad_ports_are_refused_before_any_kernel_call() {
        let (_d, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        kernel.take();
        let err = net
            .attach("p", "web-1", Path::new("/ns"), &[port(80, 80, "sctp")])
            .expect_err("sctp");
        assert!(err.to_string().contains("only tcp and udp"), "{err}");
        let mut bad_ip = port(80, 80, "tcp");
        bad_ip.host_ip = Some("::1".into());
        assert!(net
            .attach("p", "web-1", Path::new("/ns"), &[bad_ip])
            .is_err());
        assert!(kernel.take().is_empty());
    }

    #[test]
    fn a_port_published_twice_on_a_host_is_refused() {
        let (_d, kernel, net) = setup();
        net.configure(&host_network()).unwrap();
        net.attach("p", "a-1", Path::new("/ns/a"), &[port(8080, 80, "tcp")])
            .unwrap();
        kernel.take();
        let err = net
            .attach("q", "b-1", Path::new("/ns/b"), &[port(8080, 81, "tcp")])
            .expect_err("taken");
        assert_eq!(
            err.to_string(),
            "port 8080/tcp is already published on this host by pod p/a-1"
        );
        assert!(kernel.take().is_empty(), "refused before any kernel call");
        assert_eq!(net.address_of("q", "b-1"), None);
        // The same number over udp is another port.
        net.attach("q", "b-1", Path::new("/ns/b"), &[port(8080, 81, "udp")])
            .unwrap();
        let err = net
            .attach(
                "q",
                "c-1",
                Path::new("/ns/c"),
                &[port(53, 53, "udp"), port(53, 54, "udp")],
            )
            .expect_err("twice");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn forward_drops_become_warnings_naming_the_firewall() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = Arc::new(Recording {
            drops: vec![nft::ForwardDrop {
                family: "ip",
                table: "filter".into(),
                chain: "FORWARD".into(),
                owner: "ufw",
                how: "policy drop",
            }],
            ..Default::default()
        });
        let net = Network::open(dir.path(), kernel).unwrap();
        let w = net.configure(&host_network()).unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("ufw (table ip filter, chain FORWARD: policy drop) drops forwarded"),
            "{}",
            w[0]
        );
    }
}
