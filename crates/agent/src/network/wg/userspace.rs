//! Userspace WireGuard: one thread of the agent daemon moves packets between the TUN device and
//! one UDP socket, encrypting and decrypting them with boringtun's noise protocol (`Tunn`, one
//! per peer). The thread lives as long as the [`Userspace`] value: dropping it stops the thread
//! and closes the TUN device, which removes the device and its routes.
//!
//! ```text
//!  pod ─▶ bridge ─▶ route 10.213.2.0/24 dev cfwg0 ─▶ TUN read ─▶ peer by allowed subnet
//!        ─▶ Tunn::encapsulate ─▶ UDP to the peer's endpoint
//!  UDP in ─▶ peer by receiver index (or, for a handshake, by the static key it carries)
//!        ─▶ Tunn::decapsulate ─▶ inner source inside the peer's subnet? ─▶ TUN write
//! ```
//!
//! A datagram whose inner source is outside the sending peer's pod subnet is dropped
//! (WireGuard's cryptokey routing): a host can only speak for its own pods.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::keys::KeyPair;
use super::tun::Tun;
use crate::proto::net::Ipv4Net;

/// Keepalives keep NAT mappings open and the handshake age meaningful for health.
const KEEPALIVE_SECS: u16 = 25;
/// WireGuard's timers want a tick about this often.
const TICK: Duration = Duration::from_millis(250);
/// Large enough for any UDP datagram and any packet the TUN device gives.
const BUF: usize = 65_536;
/// The mesh socket's buffers (each way).
const SOCKET_BUFFER: usize = 4 << 20;
/// Packets handled per wake-up from each source before the other gets its turn.
const BATCH: usize = 64;

/// One peer as the device needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub host: String,
    pub public_key: [u8; 32],
    pub endpoint: SocketAddr,
    /// Its pod subnet: what it may send, and what is sent to it.
    pub allowed: Ipv4Net,
}

struct Peer {
    config: PeerConfig,
    /// Where it was last heard from (it may differ from the configured endpoint behind NAT).
    endpoint: SocketAddr,
    tunn: Tunn,
    /// When this side last started a handshake on its own (new peer, or a dead session).
    initiated: Option<Instant>,
}

struct Shared {
    keys: KeyPair,
    /// By slot: the upper 24 bits of the session indices this side hands out for the peer.
    peers: BTreeMap<u32, Peer>,
    next_slot: u32,
}

impl Shared {
    fn add(&mut self, config: PeerConfig) {
        let slot = self.next_slot;
        // 24 bits of slot; wrapping after 16 million peer changes reuses slots long gone.
        self.next_slot = (self.next_slot + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.keys.secret.clone(),
            PublicKey::from(config.public_key),
            None,
            Some(KEEPALIVE_SECS),
            slot,
            None,
        );
        self.peers.insert(
            slot,
            Peer {
                endpoint: config.endpoint,
                config,
                tunn,
                initiated: None,
            },
        );
    }

    /// Makes the peers exactly `wanted`, keeping the sessions of peers whose key is unchanged.
    fn set(&mut self, wanted: Vec<PeerConfig>) {
        self.peers
            .retain(|_, p| wanted.iter().any(|w| w.public_key == p.config.public_key));
        for w in wanted {
            let existing = self
                .peers
                .values_mut()
                .find(|p| p.config.public_key == w.public_key);
            match existing {
                Some(p) => {
                    if p.config.endpoint != w.endpoint {
                        p.endpoint = w.endpoint;
                    }
                    p.config = w;
                }
                None => self.add(w),
            }
        }
    }
}

/// A running userspace WireGuard device.
pub struct Userspace {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Userspace {
    /// Starts moving packets between `tun` and `udp` for `peers`. A first handshake is sent to
    /// every peer at once, so that health is known before the first pod packet.
    pub fn start(
        tun: Tun,
        udp: UdpSocket,
        keys: KeyPair,
        peers: Vec<PeerConfig>,
    ) -> io::Result<Self> {
        udp.set_nonblocking(true)?;
        // Bursts of a TCP window arrive faster than one thread drains them: the default socket
        // buffers (~200 KB) drop them, and TCP halves its rate for each loss.
        {
            use nix::sys::socket::{setsockopt, sockopt};
            // Root may exceed net.core.rmem_max/wmem_max; anyone else gets what the limit allows.
            if setsockopt(&udp, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
                let _ = setsockopt(&udp, sockopt::RcvBuf, &SOCKET_BUFFER);
            }
            if setsockopt(&udp, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
                let _ = setsockopt(&udp, sockopt::SndBuf, &SOCKET_BUFFER);
            }
        }
        let mut shared = Shared {
            keys,
            peers: BTreeMap::new(),
            next_slot: 1,
        };
        shared.set(peers);
        let shared = Arc::new(Mutex::new(shared));
        let stop = Arc::new(AtomicBool::new(false));
        let (wake_rx, wake) = nix::unistd::pipe().map_err(io::Error::from)?;
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("wg-{}", tun.name()))
                .spawn(move || run(tun, udp, shared, stop, wake_rx))?
        };
        let device = Userspace {
            shared,
            stop,
            wake,
            thread: Some(thread),
        };
        device.kick();
        Ok(device)
    }

    /// Wakes the thread (it then sends what the timers or new peers want at once).
    fn kick(&self) {
        let _ = nix::unistd::write(self.wake.as_fd(), &[1]);
    }

    /// Changes the peers in place: sessions with peers that stay are kept.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        lock(&self.shared).set(peers);
        self.kick();
    }

    /// Time since the last handshake with each peer, by host.
    pub fn handshake_ages(&self) -> BTreeMap<String, Option<Duration>> {
        lock(&self.shared)
            .peers
            .values()
            .map(|p| (p.config.host.clone(), p.tunn.time_since_last_handshake()))
            .collect()
    }
}

impl Drop for Userspace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The device's thread: waits on the TUN device, the socket and the wake pipe.
fn run(tun: Tun, udp: UdpSocket, shared: Arc<Mutex<Shared>>, stop: Arc<AtomicBool>, wake: OwnedFd) {
    let mut src = vec![0u8; BUF];
    let mut dst = vec![0u8; BUF];
    let mut last_tick = Instant::now() - TICK;
    while !stop.load(Ordering::SeqCst) {
        let (tun_ready, udp_ready, woken) = {
            let mut fds = [
                PollFd::new(tun.as_fd(), PollFlags::POLLIN),
                PollFd::new(udp.as_fd(), PollFlags::POLLIN),
                PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("mesh: waiting on {}: {e}; the mesh stops", tun.name());
                    return;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]))
        };
        if woken {
            let mut b = [0u8; 64];
            let _ = nix::unistd::read(&wake, &mut b);
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut shared = lock(&shared);
        if tun_ready {
            for _ in 0..BATCH {
                match tun.recv(&mut src) {
                    Ok(n) => outgoing(&mut shared, &udp, &src[..n], &mut dst),
                    Err(_) => break,
                }
            }
        }
        if udp_ready {
            for _ in 0..BATCH {
                match udp.recv_from(&mut src) {
                    Ok((n, from)) => incoming(&mut shared, &udp, &tun, from, &src[..n], &mut dst),
                    Err(_) => break,
                }
            }
        }
        if woken || last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            for peer in shared.peers.values_mut() {
                tick(peer, &udp, &mut dst);
            }
        }
    }
}

/// A peer's timers. Beyond WireGuard's own (which go quiet once a peer stayed silent for 90 s),
/// a peer without a session is offered a handshake every keepalive interval, so that the mesh
/// heals, and its health shows, without waiting for pod traffic.
fn tick(peer: &mut Peer, udp: &UdpSocket, dst: &mut [u8]) {
    let retry = Duration::from_secs(u64::from(KEEPALIVE_SECS));
    let idle = peer.initiated.is_none_or(|t| t.elapsed() >= retry);
    let sessionless = peer
        .tunn
        .time_since_last_handshake()
        .is_none_or(|age| age >= Duration::from_secs(180));
    match peer.tunn.update_timers(dst) {
        TunnResult::WriteToNetwork(b) => {
            let _ = udp.send_to(b, peer.endpoint);
            return;
        }
        TunnResult::Err(_) => {}
        _ if !sessionless => return,
        _ => {}
    }
    if sessionless && idle {
        peer.initiated = Some(Instant::now());
        if let TunnResult::WriteToNetwork(b) = peer.tunn.format_handshake_initiation(dst, false) {
            let _ = udp.send_to(b, peer.endpoint);
        }
    }
}

/// A packet the kernel routed into the device: to the peer whose subnet holds its destination.
fn outgoing(shared: &mut Shared, udp: &UdpSocket, packet: &[u8], dst: &mut [u8]) {
    let Some(to) = ipv4_field(packet, 16) else {
        return;
    };
    let Some(peer) = shared
        .peers
        .values_mut()
        .find(|p| p.config.allowed.contains(to))
    else {
        return;
    };
    if let TunnResult::WriteToNetwork(b) = peer.tunn.encapsulate(packet, dst) {
        let _ = udp.send_to(b, peer.endpoint);
    }
}

/// A datagram from the network.
fn incoming(
    shared: &mut Shared,
    udp: &UdpSocket,
    tun: &Tun,
    from: SocketAddr,
    datagram: &[u8],
    dst: &mut [u8],
) {
    let slot = match Tunn::parse_incoming_packet(datagram) {
        Ok(Packet::HandshakeInit(init)) => {
            let Ok(half) = parse_handshake_anon(&shared.keys.secret, &shared.keys.public, &init)
            else {
                return;
            };
            shared
                .peers
                .iter()
                .find(|(_, p)| p.config.public_key == half.peer_static_public)
                .map(|(slot, _)| *slot)
        }
        Ok(Packet::HandshakeResponse(r)) => Some(r.receiver_idx >> 8),
        Ok(Packet::PacketCookieReply(c)) => Some(c.receiver_idx >> 8),
        Ok(Packet::PacketData(d)) => Some(d.receiver_idx >> 8),
        Err(_) => None,
    };
    let Some(peer) = slot.and_then(|s| shared.peers.get_mut(&s)) else {
        return;
    };
    let mut flush = false;
    match peer.tunn.decapsulate(Some(from.ip()), datagram, dst) {
        TunnResult::Done => {}
        TunnResult::Err(_) => return,
        TunnResult::WriteToNetwork(b) => {
            flush = true;
            let _ = udp.send_to(b, from);
        }
        TunnResult::WriteToTunnelV4(b, source) => {
            if peer.config.allowed.contains(source) {
                let _ = tun.send(b);
            }
        }
        TunnResult::WriteToTunnelV6(..) => {}
    }
    // Authenticated: this is where the peer is now.
    peer.endpoint = from;
    if flush {
        // Packets queued while the handshake was in flight.
        while let TunnResult::WriteToNetwork(b) = peer.tunn.decapsulate(None, &[], dst) {
            let _ = udp.send_to(b, from);
        }
    }
}

/// The IPv4 address at `offset` of an IPv4 packet.
fn ipv4_field(packet: &[u8], offset: usize) -> Option<std::net::Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let b: [u8; 4] = packet[offset..offset + 4].try_into().ok()?;
    Some(std::net::Ipv4Addr::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> KeyPair {
        let secret = boringtun::x25519::StaticSecret::from([n; 32]);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    fn peer(host: &str, key: u8, subnet: &str) -> PeerConfig {
        PeerConfig {
            host: host.into(),
            public_key: *keys(key).public.as_bytes(),
            endpoint: "10.0.0.2:51820".parse().unwrap(),
            allowed: subnet.parse().unwrap(),
        }
    }

    #[test]
    fn peers_change_in_place_and_keep_their_slots() {
        let mut s = Shared {
            keys: keys(1),
            peers: BTreeMap::new(),
            next_slot: 1,
        };
        s.set(vec![
            peer("a", 2, "10.213.2.0/24"),
            peer("b", 3, "10.213.3.0/24"),
        ]);
        let slots: Vec<u32> = s.peers.keys().copied().collect();
        assert_eq!(slots, [1, 2]);
        let mut moved = peer("b", 3, "10.213.3.0/24");
        moved.endpoint = "10.0.0.9:51820".parse().unwrap();
        s.set(vec![moved, peer("c", 4, "10.213.4.0/24")]);
        let now: Vec<(u32, &str, SocketAddr)> = s
            .peers
            .iter()
            .map(|(k, p)| (*k, p.config.host.as_str(), p.endpoint))
            .collect();
        assert_eq!(
            now,
            [
                (2, "b", "10.0.0.9:51820".parse().unwrap()),
                (3, "c", "10.0.0.2:51820".parse().unwrap())
            ]
        );
    }

    #[test]
    fn only_ipv4_packets_have_a_destination() {
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 213, 2, 7]);
        assert_eq!(ipv4_field(&p, 16), Some("10.213.2.7".parse().unwrap()));
        p[0] = 0x60;
        assert_eq!(ipv4_field(&p, 16), None);
        assert_eq!(ipv4_field(&p[..10], 16), None);
    }
}
