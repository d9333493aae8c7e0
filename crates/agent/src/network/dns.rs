//! The agent's DNS server for pods: it listens on the host bridge's address (port 53, UDP and
//! TCP, one handler),
//! answers service names from the service map, scoped to the asking pod (found by its source
//! address), and forwards everything else to the host's resolvers through a bounded forwarder.
//! Also renders the pods' `/etc/resolv.conf` and `/etc/hosts` from `templates/`.
//!
//! Why hickory-proto and not hickory-server: what we need of a server is the wire format (parse
//! a query, build an answer, both from hickory-proto) plus two things hickory-server does not
//! give: answers that depend on the asker's source address, and a forwarder that stays bounded
//! under load (hickory's lost about half of the queries under dnsperf, hickory-dns#2613). Its
//! `Catalog`/authority layer would sit unused, and its request loop adds a second server
//! framework to a binary pushed to every host.
//!
//! ```text
//!  pod ──udp──▶ gateway:53 ─▶ source address → (project, pod) ─▶ a service name? ─▶ answer
//!                                                               └ no ─▶ forwarder ─▶ host resolvers
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::Network;

/// How long a service answer may be cached: short, since replicas come and go.
const TTL: u32 = 5;
/// Queries in flight to the upstream resolvers at once; beyond that a query is answered
/// SERVFAIL at once rather than queued (the client retries), so a flood cannot grow memory.
pub const MAX_FORWARDS: usize = 512;
/// How long one upstream gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest UDP message we read or relay.
const MAX_UDP: usize = 4096;
/// TCP clients served at once; more wait in the listen backlog.
pub const MAX_TCP_CLIENTS: usize = 128;
/// A TCP client that sends nothing for this long is let go (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

const RESOLV_TEMPLATE: &str = include_str!("../../../../templates/pod-resolv.conf");
const HOSTS_TEMPLATE: &str = include_str!("../../../../templates/pod-hosts");

/// A pod's `/etc/resolv.conf`: the agent on its host's bridge address.
pub fn resolv_conf(nameserver: Ipv4Addr) -> String {
    RESOLV_TEMPLATE.replace("{{ nameserver }}", &nameserver.to_string())
}

/// A pod's `/etc/hosts`: loopback and its own name.
pub fn hosts(address: Ipv4Addr, hostname: &str) -> String {
    HOSTS_TEMPLATE
        .replace("{{ address }}", &address.to_string())
        .replace("{{ hostname }}", hostname)
}

/// Writes a pod's `resolv.conf` and `hosts` into `dir`; returns each with the path it is
/// mounted at in the pod's containers.
pub fn write_pod_files(
    dir: &std::path::Path,
    addr: Ipv4Addr,
    nameserver: Ipv4Addr,
    hostname: &str,
) -> std::io::Result<Vec<(std::path::PathBuf, &'static str)>> {
    let resolv = dir.join("resolv.conf");
    let hosts_file = dir.join("hosts");
    crate::store::write_atomic(&resolv, resolv_conf(nameserver).as_bytes(), 0o644)?;
    crate::store::write_atomic(&hosts_file, hosts(addr, hostname).as_bytes(), 0o644)?;
    Ok(vec![
        (resolv, "/etc/resolv.conf"),
        (hosts_file, "/etc/hosts"),
    ])
}

/// The resolvers to forward to: the `nameserver`s of `resolv_conf` (the host's
/// `/etc/resolv.conf`); when that names only systemd-resolved's stub (127.0.0.53), those of
/// `systemd` (`/run/systemd/resolve/resolv.conf`), which lists the real upstreams.
pub fn upstreams(resolv_conf: &str, systemd: Option<&str>) -> Vec<SocketAddr> {
    let parse = |text: &str| -> Vec<SocketAddr> {
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver"))
                    .then(|| w.next())
                    .flatten()
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, 53))
            })
            .collect()
    };
    let main = parse(resolv_conf);
    let stub: std::net::IpAddr = Ipv4Addr::new(127, 0, 0, 53).into();
    if !main.is_empty() && main.iter().all(|a| a.ip() == stub) {
        if let Some(real) = systemd.map(parse).filter(|r| !r.is_empty()) {
            return real;
        }
    }
    main
}

/// The host's upstream resolvers, read now.
pub fn host_upstreams() -> Vec<SocketAddr> {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let systemd = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
    upstreams(&main, systemd.as_deref())
}

/// What to do with one query.
#[derive(Debug, PartialEq)]
pub enum Action {
    Reply(Vec<u8>),
    Forward,
    /// Not a DNS query we can answer or relay: no reply.
    Ignore,
}

/// Answers `query` from `resolve` (the service names of the asker), or says to forward it.
/// `resolve(name, a)`: `a` is whether the addresses are wanted (an A query): only then does a
/// dnsrr name turn its order.
pub fn answer(query: &[u8], resolve: impl FnOnce(&str, bool) -> Option<Vec<Ipv4Addr>>) -> Action {
    let Ok(msg) = Message::from_vec(query) else {
        return Action::Ignore;
    };
    if msg.metadata.message_type != MessageType::Query {
        return Action::Ignore;
    }
    let reply = |code: ResponseCode, answers: Vec<Record>| {
        let mut r = Message::response(msg.metadata.id, msg.metadata.op_code);
        r.metadata.response_code = code;
        r.metadata.recursion_desired = msg.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.authoritative = code == ResponseCode::NoError;
        r.add_queries(msg.queries.iter().cloned());
        r.add_answers(answers);
        r.to_vec().map_or(Action::Ignore, Action::Reply)
    };
    let [q] = msg.queries.as_slice() else {
        return reply(ResponseCode::FormErr, vec![]);
    };
    if msg.metadata.op_code != OpCode::Query {
        return reply(ResponseCode::NotImp, vec![]);
    }
    let name = q.name().to_ascii();
    let Some(addrs) = resolve(&name, q.query_type() == RecordType::A) else {
        return Action::Forward;
    };
    // A service name: A records; any other type exists but is empty (NODATA), so that a
    // client asking AAAA first falls back to A instead of giving up.
    let records = if q.query_type() == RecordType::A {
        addrs
            .into_iter()
            .map(|a| Record::from_rdata(q.name().clone(), TTL, RData::A(A(a))))
            .collect()
    } else {
        vec![]
    };
    reply(ResponseCode::NoError, records)
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut r = Message::error_msg(
        msg.metadata.id,
        msg.metadata.op_code,
        ResponseCode::ServFail,
    );
    r.add_queries(msg.queries);
    r.to_vec().ok()
}

/// Sends `query` to the upstreams in turn until one answers with the same id.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0; MAX_UDP];
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                // A reply to another query (a stray late one) is not ours.
                if buf.get(..2) == Some(id) {
                    return Some(n);
                }
            }
        })
        .await;
        if let Ok(Some(n)) = got {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// A UDP socket on `addr` that may be bound before the address exists (IP_FREEBIND): the bridge
/// gets its address with the first pod, and the server must not miss that pod's first query.
fn bind_freebind(addr: SocketAddrV4) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// A TCP listener on `addr`, bound like [`bind_freebind`].
fn listen_freebind(addr: SocketAddrV4) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

/// Serves DNS for the pods of this host for as long as the agent runs: waits for the host to
/// have a pod subnet, then answers on its gateway address, over UDP and TCP.
pub async fn serve(network: Arc<Network>) {
    let socket = loop {
        if let Some(gw) = network.subnet().and_then(|s| s.gateway()) {
            let addr = SocketAddrV4::new(gw, 53);
            match bind_freebind(addr).and_then(UdpSocket::from_std) {
                Ok(s) => {
                    // TCP is for answers too large for UDP and clients that insist: without
                    // it they fail, but UDP still serves everyone else.
                    match listen_freebind(addr).and_then(TcpListener::from_std) {
                        Ok(l) => {
                            tokio::spawn(run_tcp(l, network.clone(), host_upstreams()));
                        }
                        Err(e) => crate::supervisor::state::log(&format!(
                            "the pods' DNS server cannot listen on {gw}:53/tcp: {e}"
                        )),
                    }
                    break s;
                }
                Err(e) => {
                    crate::supervisor::state::log(&format!(
                        "the pods' DNS server cannot listen on {gw}:53: {e}; retrying"
                    ));
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    run(Arc::new(socket), network, host_upstreams()).await
}

/// The server loop on `socket`.
pub async fn run(socket: Arc<UdpSocket>, network: Arc<Network>, upstreams: Vec<SocketAddr>) {
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0; MAX_UDP];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let query = &buf[..n];
        let asker = match from.ip() {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        };
        let action = answer(query, |name, rotate| {
            asker.and_then(|ip| network.resolve(ip, name, rotate))
        });
        match action {
            Action::Reply(bytes) => {
                let _ = socket.send_to(&bytes, from).await;
            }
            Action::Ignore => {}
            Action::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    if let Some(bytes) = servfail(query) {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                    continue;
                };
                let (socket, upstreams, query) =
                    (socket.clone(), upstreams.clone(), query.to_vec());
                tokio::spawn(async move {
                    let reply = match forward(&query, &upstreams).await {
                        Some(r) => Some(r),
                        None => servfail(&query),
                    };
                    if let Some(bytes) = reply {
                        let _ = socket.send_to(&bytes, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The TCP server loop on `listener`: each client may send several length-prefixed queries
/// (RFC 1035 4.2.2), answered in order by the same handler as UDP's. At most
/// [`MAX_TCP_CLIENTS`] clients and [`MAX_FORWARDS`] forwarded queries at once.
pub async fn run_tcp(listener: TcpListener, network: Arc<Network>, upstreams: Vec<SocketAddr>) {
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            continue; // dropped: the client retries, or falls back to UDP
        };
        let (network, upstreams, forwards) = (network.clone(), upstreams.clone(), forwards.clone());
        tokio::spawn(async move {
            let _ = tcp_client(stream, from, &network, &upstreams, &forwards).await;
            drop(permit);
        });
    }
}

async fn tcp_client(
    mut stream: TcpStream,
    from: SocketAddr,
    network: &Network,
    upstreams: &[SocketAddr],
    forwards: &Semaphore,
) -> std::io::Result<()> {
    let asker = match from.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    };
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()), // idle, or the client closed
        }
        let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let action = answer(&query, |name, rotate| {
            asker.and_then(|ip| network.resolve(ip, name, rotate))
        });
        let reply = match action {
            Action::Reply(bytes) => bytes,
            Action::Ignore => return Ok(()),
            Action::Forward => match forwards.try_acquire() {
                Ok(_permit) => match forward_tcp(&query, upstreams).await {
                    Some(r) => r,
                    None => servfail(&query).unwrap_or_default(),
                },
                Err(_) => servfail(&query).unwrap_or_default(),
            },
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&reply);
        stream.write_all(&out).await?;
    }
}

/// Sends `query` over TCP to the upstreams in turn (an answer too large for UDP stays whole);
/// UDP when none answers over TCP.
async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = query.get(..2)?;
    let n = u16::try_from(query.len()).ok()?;
    for up in upstreams {
        let got = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            let mut s = TcpStream::connect(up).await.ok()?;
            let mut out = n.to_be_bytes().to_vec();
            out.extend_from_slice(query);
            s.write_all(&out).await.ok()?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await.ok()?;
            let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).await.ok()?;
            (buf.get(..2) == Some(id)).then_some(buf)
        })
        .await;
        if let Ok(Some(reply)) = got {
            return Some(reply);
        }
    }
    forward(query, upstreams).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn parse(a: Action) -> Message {
        match a {
            Action::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_names_get_a_records_and_the_rest_is_forwarded() {
        let ip: Ipv4Addr = "10.214.0.9".parse().unwrap();
        let r = parse(answer(&query("api.", RecordType::A), |n, _| {
            assert_eq!(n, "api.");
            Some(vec![ip])
        }));
        assert_eq!(r.metadata.id, 4242);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let got: Vec<_> = r.answers.iter().map(|a| a.data.clone()).collect();
        assert_eq!(got, [RData::A(A(ip))]);
        let aaaa = parse(answer(&query("api.", RecordType::AAAA), |_, _| {
            Some(vec![ip])
        }));
        assert!(aaaa.answers.is_empty(), "NODATA for AAAA");
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            answer(&query("example.com.", RecordType::A), |_, _| None),
            Action::Forward
        );
        assert_eq!(answer(b"\x00\x01junk", |_, _| None), Action::Ignore);
    }

    #[test]
    fn the_stub_resolver_is_replaced_by_its_upstreams() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let real = "nameserver 192.0.2.1\nnameserver 192.0.2.2\n";
        let ups = |v: &[&str]| -> Vec<SocketAddr> {
            v.iter()
                .map(|s| SocketAddr::new(s.parse().unwrap(), 53))
                .collect()
        };
        assert_eq!(
            upstreams(stub, Some(real)),
            ups(&["192.0.2.1", "192.0.2.2"])
        );
        assert_eq!(upstreams(stub, None), ups(&["127.0.0.53"]));
        assert_eq!(
            upstreams(real, Some(stub)),
            ups(&["192.0.2.1", "192.0.2.2"])
        );
    }

    #[test]
    fn pod_files_come_from_the_templates() {
        let r = resolv_conf("10.213.1.1".parse().unwrap());
        assert!(r.contains("\nnameserver 10.213.1.1\n"), "{r}");
        let h = hosts("10.213.1.2".parse().unwrap(), "web-1");
        assert!(h.ends_with("10.213.1.2\tweb-1\n"), "{h}");
    }
}
