//! Kernel WireGuard (Linux ≥ 5.6, or the backport module), driven in-process: the device is an
//! rtnetlink link of kind `wireguard`, configured over generic netlink with the `wireguard`
//! family's `WG_CMD_SET_DEVICE` (private key, listen port, peers with their public key, endpoint,
//! allowed subnet and keepalive) and read back with `WG_CMD_GET_DEVICE` (handshake times, for
//! peer health). Never `wg` or `ip`.
//!
//! ```text
//!  start ─▶ link cfwg0 of kind wireguard? ── yes ─▶ reuse it (a kernel device outlives the agent)
//!           │ no
//!           └▶ RTM_NEWLINK kind wireguard ── EOPNOTSUPP ─▶ the userspace device (`userspace`)
//!                                          └ ok ─▶ SET_DEVICE key, port, peers; MTU, up, routes
//!  set_peers ─▶ GET_DEVICE ─▶ diff against the wanted peers ─▶ SET_DEVICE (removals, updates)
//! ```
//!
//! Peers change in place, never with `WGDEVICE_F_REPLACE_PEERS`: a peer that stays keeps its
//! session and its last handshake time. The message layout is the kernel's uapi
//! `linux/wireguard.h`; the types are `netlink-packet-wireguard`'s (MIT).
//!
//! The development and CI kernels have no WireGuard, so only the choice, the encoding and the
//! decoding are tested here (unit tests against the uapi layout); the fallback is what runs.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use super::userspace::PeerConfig;
use crate::network::netlink::{is_errno, Netlink};

/// The generic netlink family of kernel WireGuard (`WG_GENL_NAME`).
pub const FAMILY: &str = "wireguard";
/// The rtnetlink link kind of a kernel WireGuard device.
pub const LINK_KIND: &str = "wireguard";
/// Keepalives keep NAT mappings open and the handshake age meaningful for health (as the
/// userspace device does).
pub const KEEPALIVE_SECS: u16 = 25;
/// Bytes of attributes per `WG_CMD_SET_DEVICE` message. The uapi says a configuration larger
/// than the kernel accepts in one message goes in several; `wg` itself sends messages of about
/// a page, and a peer of ours takes ~100 bytes, so a thousand-host fleet is a few messages.
pub const MESSAGE_BUDGET: usize = 16 * 1024;

/// Which implementation runs the mesh device.
pub use crate::proto::mesh::DeviceKind;

/// What `start` does about the device name, from what the kernel already has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    /// A kernel WireGuard device from an earlier agent: configure it in place.
    Reuse,
    /// Nothing there: try to create a kernel device.
    Create,
    /// Something else holds the name (a TUN device of a live agent): the userspace path, which
    /// reports it.
    Userspace,
}

/// The choice for an existing link of kind `kind` (`None`: no such link).
pub fn existing(kind: Option<&str>) -> Existing {
    match kind {
        Some(LINK_KIND) => Existing::Reuse,
        Some(_) => Existing::Userspace,
        None => Existing::Create,
    }
}

/// What creating the kernel link told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Kernel,
    /// The kernel has no WireGuard: the userspace device, for this reason.
    Userspace(String),
}

/// The choice after `RTM_NEWLINK` of kind `wireguard` answered `errno` (`None`: created).
/// Only "this kernel has no such link kind" falls back; any other refusal (no permission, out
/// of memory) is an error the user must see, since userspace would fail the same way or hide it.
pub fn after_create(errno: Option<i32>) -> Result<Choice, i32> {
    match errno {
        None => Ok(Choice::Kernel),
        // rtnl_newlink: no link ops for the kind after trying to load the module.
        Some(libc::EOPNOTSUPP) => Ok(Choice::Userspace(
            "the kernel has no WireGuard (it refused a link of kind `wireguard`)".into(),
        )),
        Some(e) => Err(e),
    }
}

/// The choice after resolving the `wireguard` generic netlink family (`None`: found). A kernel
/// that makes the link but has no family (a broken backport) cannot be configured.
pub fn after_family(errno: Option<i32>) -> Result<Choice, i32> {
    match errno {
        None => Ok(Choice::Kernel),
        Some(libc::ENOENT) => Ok(Choice::Userspace(
            "the kernel made a `wireguard` link but has no `wireguard` generic netlink family"
                .into(),
        )),
        Some(e) => Err(e),
    }
}

/// A generic netlink message of the `wireguard` family.
pub type WgMessage = GenlMessage<WireguardMessage>;

fn allowed(subnet: crate::proto::net::Ipv4Net) -> WireguardAllowedIp {
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
        WireguardAllowedIpAttr::IpAddr(IpAddr::V4(subnet.network())),
        WireguardAllowedIpAttr::Cidr(subnet.prefix()),
    ])
}

/// One wanted peer as `WG_CMD_SET_DEVICE` sets it: its allowed IPs replaced by its pod subnet.
fn set_peer(p: &PeerConfig) -> WireguardPeer {
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(p.public_key),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::Endpoint(p.endpoint),
        WireguardPeerAttribute::PersistentKeepalive(KEEPALIVE_SECS),
        WireguardPeerAttribute::AllowedIps(vec![allowed(p.allowed)]),
    ])
}

fn remove_peer(key: [u8; 32]) -> WireguardPeer {
    WireguardPeer(vec![
        WireguardPeerAttribute::PublicKey(key),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
    ])
}

/// A peer as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelPeer {
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    /// `(address, prefix)` pairs.
    pub allowed: Vec<(IpAddr, u8)>,
    /// Wall-clock time of the last handshake; `None` before the first (the kernel says 0).
    pub last_handshake: Option<SystemTime>,
}

/// The peer changes that make the device's peers (`current`, by public key) exactly `wanted`:
/// removals first, then every wanted peer whose endpoint, keepalive or subnet differs (a peer
/// the kernel already has as wanted is left alone, so its session is untouched).
pub fn peer_changes(
    current: &BTreeMap<[u8; 32], KernelPeer>,
    wanted: &[PeerConfig],
) -> Vec<WireguardPeer> {
    let mut out: Vec<WireguardPeer> = current
        .keys()
        .filter(|k| !wanted.iter().any(|w| &w.public_key == *k))
        .map(|k| remove_peer(*k))
        .collect();
    for w in wanted {
        let same = current.get(&w.public_key).is_some_and(|c| {
            c.endpoint == Some(w.endpoint)
                && c.keepalive == Some(KEEPALIVE_SECS)
                && c.allowed == [(IpAddr::V4(w.allowed.network()), w.allowed.prefix())]
        });
        if !same {
            out.push(set_peer(w));
        }
    }
    out
}

/// The `WG_CMD_SET_DEVICE` messages for device `ifname`: the first carries the private key and
/// the listen port (when given), every one carries the name, and the peers are spread so that no
/// message's attributes exceed `budget` bytes (each message carries at least one peer).
pub fn set_device(
    ifname: &str,
    private_key: Option<[u8; 32]>,
    port: Option<u16>,
    peers: Vec<WireguardPeer>,
    budget: usize,
) -> Vec<WireguardMessage> {
    use netlink_packet_core::Emitable;
    let mut first = vec![WireguardAttribute::IfName(ifname.to_string())];
    if let Some(k) = private_key {
        first.push(WireguardAttribute::PrivateKey(k));
    }
    if let Some(p) = port {
        first.push(WireguardAttribute::ListenPort(p));
    }
    let mut messages = Vec::new();
    let mut head = first;
    let mut batch: Vec<WireguardPeer> = Vec::new();
    let size = |head: &[WireguardAttribute], batch: &[WireguardPeer]| {
        head.buffer_len() + WireguardAttribute::Peers(batch.to_vec()).buffer_len()
    };
    for peer in peers {
        batch.push(peer);
        if batch.len() > 1 && size(&head, &batch) > budget {
            let last = batch.pop().expect("just pushed");
            let mut attributes = std::mem::take(&mut head);
            attributes.push(WireguardAttribute::Peers(std::mem::take(&mut batch)));
            messages.push(WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes,
            });
            head = vec![WireguardAttribute::IfName(ifname.to_string())];
            batch.push(last);
        }
    }
    // The last batch; or the device settings alone when there is no peer change.
    let has_settings = head.len() > 1;
    if !batch.is_empty() || has_settings || messages.is_empty() {
        let mut attributes = head;
        if !batch.is_empty() {
            attributes.push(WireguardAttribute::Peers(batch));
        }
        messages.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
    }
    messages
}

/// The `WG_CMD_GET_DEVICE` request for `ifname` (sent as a dump).
pub fn get_device(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    }
}

/// The peers of a `WG_CMD_GET_DEVICE` dump, by public key. The kernel splits a large device
/// over several messages and a peer's allowed IPs over adjacent entries repeating its key
/// (uapi), so entries of one key are merged.
pub fn peers_of(messages: &[WireguardMessage]) -> BTreeMap<[u8; 32], KernelPeer> {
    let mut out: BTreeMap<[u8; 32], KernelPeer> = BTreeMap::new();
    for m in messages {
        for a in &m.attributes {
            let WireguardAttribute::Peers(peers) = a else {
                continue;
            };
            for p in peers {
                let Some(key) = p.iter().find_map(|a| match a {
                    WireguardPeerAttribute::PublicKey(k) => Some(*k),
                    _ => None,
                }) else {
                    continue;
                };
                let entry = out.entry(key).or_default();
                for a in p.iter() {
                    match a {
                        WireguardPeerAttribute::Endpoint(e) => entry.endpoint = Some(*e),
                        WireguardPeerAttribute::PersistentKeepalive(k) => {
                            entry.keepalive = Some(*k)
                        }
                        WireguardPeerAttribute::LastHandshake(t) => {
                            entry.last_handshake =
                                (t.seconds > 0 || t.nano_seconds > 0).then(|| {
                                    UNIX_EPOCH
                                        + Duration::new(
                                            u64::try_from(t.seconds).unwrap_or(0),
                                            u32::try_from(t.nano_seconds).unwrap_or(0),
                                        )
                                });
                        }
                        WireguardPeerAttribute::AllowedIps(ips) => {
                            for ip in ips {
                                let addr = ip.iter().find_map(|a| match a {
                                    WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
                                    _ => None,
                                });
                                let cidr = ip.iter().find_map(|a| match a {
                                    WireguardAllowedIpAttr::Cidr(c) => Some(*c),
                                    _ => None,
                                });
                                if let (Some(a), Some(c)) = (addr, cidr) {
                                    entry.allowed.push((a, c));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

/// Time since each configured peer's last handshake, by host (`None` before the first; a clock
/// that went back counts as just now).
pub fn handshake_ages(
    peers: &[PeerConfig],
    kernel: &BTreeMap<[u8; 32], KernelPeer>,
    now: SystemTime,
) -> BTreeMap<String, Option<Duration>> {
    peers
        .iter()
        .map(|p| {
            let age = kernel
                .get(&p.public_key)
                .and_then(|k| k.last_handshake)
                .map(|t| now.duration_since(t).unwrap_or_default());
            (p.host.clone(), age)
        })
        .collect()
}

/// A generic netlink socket that knows the `wireguard` family's id.
pub struct Genl {
    sock: Netlink,
    family: u16,
}

/// Resolves generic netlink family `name` to its id (`CTRL_CMD_GETFAMILY`); ENOENT when the
/// kernel has none.
pub fn resolve_family(sock: &mut Netlink, name: &str) -> io::Result<u16> {
    let msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
    });
    let what = format!("looking up the generic netlink family {name}");
    match sock.get(msg, &what)? {
        Some(reply) => reply
            .payload
            .nlas
            .iter()
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("{what}: the answer has no id"))),
        None => Err(io::Error::other(format!("{what}: no answer"))),
    }
}

impl Genl {
    /// Opens a generic netlink socket and resolves the `wireguard` family.
    pub fn open() -> io::Result<Genl> {
        let mut sock = Netlink::open(netlink_sys::constants::NETLINK_GENERIC)?;
        let family = resolve_family(&mut sock, FAMILY)?;
        Ok(Genl { sock, family })
    }

    fn wrap(&self, m: WireguardMessage) -> WgMessage {
        let mut g = GenlMessage::from_payload(m);
        g.set_resolved_family_id(self.family);
        g
    }

    /// The device's peers as the kernel has them.
    pub fn peers(&mut self, ifname: &str) -> io::Result<BTreeMap<[u8; 32], KernelPeer>> {
        let request = self.wrap(get_device(ifname));
        let replies = self
            .sock
            .dump(request, &format!("reading WireGuard device {ifname}"))?;
        let messages: Vec<WireguardMessage> = replies.into_iter().map(|g| g.payload).collect();
        Ok(peers_of(&messages))
    }

    /// Sends `messages` (from [`set_device`]) in one batch, each acked.
    pub fn set(&mut self, ifname: &str, messages: Vec<WireguardMessage>) -> io::Result<()> {
        let wrapped: Vec<(WgMessage, u16)> =
            messages.into_iter().map(|m| (self.wrap(m), 0)).collect();
        // Never a message's Debug: it holds the private key.
        self.sock.transact(wrapped, None, &|i| {
            format!("configuring WireGuard device {ifname} (message {})", i + 1)
        })
    }
}

/// Whether `e` says the kernel lacks the `wireguard` family.
pub fn no_family(e: &io::Error) -> bool {
    is_errno(e, libc::ENOENT)
}

#[cfg(test)]
mod tests {
    //! Byte-level expectations written from the kernel's uapi `linux/wireguard.h` and
    //! `linux/netlink.h`/`genetlink.h` (attribute numbers, nesting, `sockaddr_in`, timespec),
    //! not from the encoder under test.
    use super::*;
    use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};

    // enum wgdevice_attribute
    const WGDEVICE_A_IFNAME: u16 = 2;
    const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
    const WGDEVICE_A_LISTEN_PORT: u16 = 6;
    const WGDEVICE_A_PEERS: u16 = 8;
    // enum wgpeer_attribute
    const WGPEER_A_PUBLIC_KEY: u16 = 1;
    const WGPEER_A_FLAGS: u16 = 3;
    const WGPEER_A_ENDPOINT: u16 = 4;
    const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
    const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
    const WGPEER_A_ALLOWEDIPS: u16 = 9;
    // enum wgallowedip_attribute
    const WGALLOWEDIP_A_FAMILY: u16 = 1;
    const WGALLOWEDIP_A_IPADDR: u16 = 2;
    const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
    // enum wgpeer_flag
    const WGPEER_F_REMOVE_ME: u32 = 1;
    const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
    // linux/netlink.h
    const NLA_F_NESTED: u16 = 1 << 15;

    /// One netlink attribute: `struct nlattr { u16 nla_len; u16 nla_type; }`, the value, then
    /// padding to 4 bytes (`NLA_ALIGNTO`); `nla_len` excludes the padding.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn nested(kind: u16, items: &[Vec<u8>]) -> Vec<u8> {
        nla(kind | NLA_F_NESTED, &items.concat())
    }

    /// `struct sockaddr_in`: family (host order), port (network order), address, 8 zero bytes.
    fn sockaddr_in(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&ip);
        b.extend_from_slice(&[0; 8]);
        b
    }

    fn allowed_v4(ip: [u8; 4], cidr: u8) -> Vec<u8> {
        nested(
            0,
            &[
                nla(WGALLOWEDIP_A_FAMILY, &(libc::AF_INET as u16).to_ne_bytes()),
                nla(WGALLOWEDIP_A_IPADDR, &ip),
                nla(WGALLOWEDIP_A_CIDR_MASK, &[cidr]),
            ],
        )
    }

    fn peer(host: &str, key: u8, endpoint: &str, subnet: &str) -> PeerConfig {
        PeerConfig {
            host: host.into(),
            public_key: [key; 32],
            endpoint: endpoint.parse().unwrap(),
            allowed: subnet.parse().unwrap(),
        }
    }

    fn bytes(m: &WireguardMessage) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    #[test]
    fn set_device_is_the_uapi_layout() {
        let p = peer("h2", 9, "10.250.1.12:51820", "10.213.2.0/24");
        let messages = set_device(
            "cfwg0",
            Some([7; 32]),
            Some(51820),
            peer_changes(&BTreeMap::new(), &[p]),
            MESSAGE_BUDGET,
        );
        assert_eq!(messages.len(), 1);
        let expected = [
            nla(WGDEVICE_A_IFNAME, b"cfwg0\0"),
            nla(WGDEVICE_A_PRIVATE_KEY, &[7; 32]),
            nla(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes()),
            nested(
                WGDEVICE_A_PEERS,
                &[nested(
                    0,
                    &[
                        nla(WGPEER_A_PUBLIC_KEY, &[9; 32]),
                        nla(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()),
                        nla(WGPEER_A_ENDPOINT, &sockaddr_in([10, 250, 1, 12], 51820)),
                        nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &25u16.to_ne_bytes()),
                        nested(WGPEER_A_ALLOWEDIPS, &[allowed_v4([10, 213, 2, 0], 24)]),
                    ],
                )],
            ),
        ]
        .concat();
        assert_eq!(bytes(&messages[0]), expected);
        assert_eq!(messages[0].cmd, WireguardCmd::SetDevice);
    }

    #[test]
    fn the_message_has_the_genetlink_headers_of_the_resolved_family() {
        let mut g = GenlMessage::from_payload(get_device("cfwg0"));
        g.set_resolved_family_id(0x1d);
        let mut nl = NetlinkMessage::from(g);
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        nl.header.sequence_number = 7;
        nl.finalize();
        let mut b = vec![0; nl.buffer_len()];
        nl.serialize(&mut b);
        let attrs = nla(WGDEVICE_A_IFNAME, b"cfwg0\0");
        let mut expected = Vec::new();
        // struct nlmsghdr: len, type (the family id), flags, seq, pid.
        expected.extend_from_slice(&((16 + 4 + attrs.len()) as u32).to_ne_bytes());
        expected.extend_from_slice(&0x1du16.to_ne_bytes());
        expected.extend_from_slice(&(0x01u16 | 0x04).to_ne_bytes());
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        // struct genlmsghdr: cmd WG_CMD_GET_DEVICE (0), version WG_GENL_VERSION (1), reserved.
        expected.extend_from_slice(&[0, 1, 0, 0]);
        expected.extend_from_slice(&attrs);
        assert_eq!(b, expected);
    }

    #[test]
    fn only_changed_peers_are_sent_and_gone_ones_removed() {
        let stays = peer("h2", 2, "10.250.1.12:51820", "10.213.2.0/24");
        let moved = peer("h3", 3, "10.250.2.13:51820", "10.213.3.0/24");
        let new = peer("h5", 5, "10.250.2.15:51820", "10.213.5.0/24");
        let as_kernel = |p: &PeerConfig, endpoint: &str| KernelPeer {
            endpoint: Some(endpoint.parse().unwrap()),
            keepalive: Some(KEEPALIVE_SECS),
            allowed: vec![(IpAddr::V4(p.allowed.network()), p.allowed.prefix())],
            last_handshake: None,
        };
        let mut current = BTreeMap::new();
        current.insert([2; 32], as_kernel(&stays, "10.250.1.12:51820"));
        current.insert([3; 32], as_kernel(&moved, "10.250.9.13:51820"));
        current.insert([4; 32], KernelPeer::default());
        let changes = peer_changes(&current, &[stays, moved.clone(), new.clone()]);
        let mut b = vec![0; changes.as_slice().buffer_len()];
        changes.as_slice().emit(&mut b);
        let expected = [
            nested(
                0,
                &[
                    nla(WGPEER_A_PUBLIC_KEY, &[4; 32]),
                    nla(WGPEER_A_FLAGS, &WGPEER_F_REMOVE_ME.to_ne_bytes()),
                ],
            ),
            bytes_of_peer(&moved, [10, 250, 2, 13], [10, 213, 3, 0]),
            bytes_of_peer(&new, [10, 250, 2, 15], [10, 213, 5, 0]),
        ]
        .concat();
        assert_eq!(b, expected, "h2 is as wanted: not sent, its session stays");
    }

    fn bytes_of_peer(p: &PeerConfig, endpoint: [u8; 4], subnet: [u8; 4]) -> Vec<u8> {
        nested(
            0,
            &[
                nla(WGPEER_A_PUBLIC_KEY, &p.public_key),
                nla(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()),
                nla(WGPEER_A_ENDPOINT, &sockaddr_in(endpoint, 51820)),
                nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &25u16.to_ne_bytes()),
                nested(WGPEER_A_ALLOWEDIPS, &[allowed_v4(subnet, 24)]),
            ],
        )
    }

    #[test]
    fn many_peers_are_spread_over_messages_within_the_budget() {
        let peers: Vec<PeerConfig> = (1..=200u8)
            .map(|i| {
                peer(
                    &format!("h{i}"),
                    i,
                    &format!("10.250.0.{i}:51820"),
                    &format!("10.213.{i}.0/24"),
                )
            })
            .collect();
        let messages = set_device(
            "cfwg0",
            Some([1; 32]),
            Some(4500),
            peer_changes(&BTreeMap::new(), &peers),
            4096,
        );
        assert!(messages.len() > 1, "{} messages", messages.len());
        let mut sent = 0;
        for (i, m) in messages.iter().enumerate() {
            let b = bytes(m);
            // Every message names the device; only the first sets the key and the port.
            assert_eq!(&b[..12], &nla(WGDEVICE_A_IFNAME, b"cfwg0\0")[..]);
            let has_key = m
                .attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::PrivateKey(_)));
            assert_eq!(has_key, i == 0);
            assert!(b.len() <= 4096, "message {i} is {} bytes", b.len());
            sent += peers_of(std::slice::from_ref(m)).len();
        }
        assert_eq!(sent, 200);
        // Nothing to change: one message with the settings; without settings, one that names
        // the device only.
        assert_eq!(set_device("cfwg0", None, Some(1), vec![], 4096).len(), 1);
        assert_eq!(set_device("cfwg0", None, None, vec![], 4096).len(), 1);
    }

    /// A `WG_CMD_GET_DEVICE` answer as the kernel writes it: the device split over two
    /// messages, the second repeating peer 2's key with the rest of its allowed IPs.
    #[test]
    fn a_dump_is_decoded_and_split_peers_merged() {
        let timespec = |s: i64, ns: i64| [s.to_ne_bytes(), ns.to_ne_bytes()].concat();
        let first = [
            nla(WGDEVICE_A_IFNAME, b"cfwg0\0"),
            nla(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes()),
            nested(
                WGDEVICE_A_PEERS,
                &[
                    nested(
                        0,
                        &[
                            nla(WGPEER_A_PUBLIC_KEY, &[1; 32]),
                            nla(WGPEER_A_ENDPOINT, &sockaddr_in([10, 250, 1, 12], 51820)),
                            nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &25u16.to_ne_bytes()),
                            nla(WGPEER_A_LAST_HANDSHAKE_TIME, &timespec(1_700_000_000, 5)),
                            nested(WGPEER_A_ALLOWEDIPS, &[allowed_v4([10, 213, 2, 0], 24)]),
                        ],
                    ),
                    nested(
                        0,
                        &[
                            nla(WGPEER_A_PUBLIC_KEY, &[2; 32]),
                            nla(WGPEER_A_LAST_HANDSHAKE_TIME, &timespec(0, 0)),
                            nested(WGPEER_A_ALLOWEDIPS, &[allowed_v4([10, 213, 3, 0], 24)]),
                        ],
                    ),
                ],
            ),
        ]
        .concat();
        let second = [
            nla(WGDEVICE_A_IFNAME, b"cfwg0\0"),
            nested(
                WGDEVICE_A_PEERS,
                &[nested(
                    0,
                    &[
                        nla(WGPEER_A_PUBLIC_KEY, &[2; 32]),
                        nested(WGPEER_A_ALLOWEDIPS, &[allowed_v4([10, 213, 4, 0], 24)]),
                    ],
                )],
            ),
        ]
        .concat();
        let parse = |attrs: &[u8]| {
            // nlmsghdr + genlmsghdr (cmd GET_DEVICE, version 1), as received.
            let mut b = Vec::new();
            b.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
            b.extend_from_slice(&0x1du16.to_ne_bytes());
            b.extend_from_slice(&0x02u16.to_ne_bytes()); // NLM_F_MULTI
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&[0, 1, 0, 0]);
            b.extend_from_slice(attrs);
            let m = NetlinkMessage::<WgMessage>::deserialize(&b).expect("parses");
            match m.payload {
                NetlinkPayload::InnerMessage(g) => g.payload,
                other => panic!("{other:?}"),
            }
        };
        let peers = peers_of(&[parse(&first), parse(&second)]);
        assert_eq!(peers.len(), 2);
        let one = &peers[&[1; 32]];
        assert_eq!(one.endpoint, Some("10.250.1.12:51820".parse().unwrap()));
        assert_eq!(one.keepalive, Some(25));
        assert_eq!(
            one.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        let two = &peers[&[2; 32]];
        assert_eq!(two.last_handshake, None, "0 means never");
        let two_allowed: Vec<String> = two
            .allowed
            .iter()
            .map(|(a, c)| format!("{a}/{c}"))
            .collect();
        assert_eq!(two_allowed, ["10.213.3.0/24", "10.213.4.0/24"]);

        // Ages by host, from the wall clock.
        let configured = [
            peer("h2", 1, "10.250.1.12:51820", "10.213.2.0/24"),
            peer("h3", 2, "10.250.1.13:51820", "10.213.3.0/24"),
            peer("h9", 9, "10.250.1.19:51820", "10.213.9.0/24"),
        ];
        let now = UNIX_EPOCH + Duration::new(1_700_000_012, 5);
        let ages = handshake_ages(&configured, &peers, now);
        assert_eq!(ages["h2"], Some(Duration::from_secs(12)));
        assert_eq!(ages["h3"], None);
        assert_eq!(ages["h9"], None, "not on the device");
    }

    #[test]
    fn only_a_kernel_without_wireguard_falls_back_to_userspace() {
        assert_eq!(existing(Some("wireguard")), Existing::Reuse);
        assert_eq!(existing(Some("tun")), Existing::Userspace);
        assert_eq!(existing(None), Existing::Create);
        assert_eq!(after_create(None), Ok(Choice::Kernel));
        assert!(matches!(
            after_create(Some(libc::EOPNOTSUPP)),
            Ok(Choice::Userspace(_))
        ));
        assert_eq!(after_create(Some(libc::EPERM)), Err(libc::EPERM));
        assert_eq!(after_family(None), Ok(Choice::Kernel));
        assert!(matches!(
            after_family(Some(libc::ENOENT)),
            Ok(Choice::Userspace(_))
        ));
        assert_eq!(after_family(Some(libc::EACCES)), Err(libc::EACCES));
    }
}
