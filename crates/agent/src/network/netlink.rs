//! A blocking netlink socket: send a request (or an nf_tables batch), read its acks or its dump.
//!
//! Blocking on purpose: pod-side setup runs on a short thread that has entered the pod's network
//! namespace, and a socket belongs to the namespace it was opened in, so one plain socket per
//! operation is simpler and cheaper than an async connection task.

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A message of one netlink family (route or netfilter).
pub trait Message:
    NetlinkSerializable + NetlinkDeserializable + Into<NetlinkPayload<Self>> + std::fmt::Debug + Sized
{
}

impl<T> Message for T where
    T: NetlinkSerializable + NetlinkDeserializable + Into<NetlinkPayload<T>> + std::fmt::Debug
{
}

/// The kernel answers netlink requests while handling them; a reply missing this long means
/// something is wrong (a lost message), and the agent must not hang on it.
const RECEIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn set_receive_timeout(sock: &Socket, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: setsockopt reads one timeval we own, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One netlink socket of one protocol family, connected to the kernel.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

/// The kernel refused a request: what we asked, and its errno.
#[derive(Debug)]
pub struct KernelError {
    pub errno: i32,
    pub what: String,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.what,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for KernelError {}

fn kernel_error(code: i32, what: &str) -> io::Error {
    let errno = code.saturating_neg();
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(
        kind,
        KernelError {
            errno,
            what: what.to_string(),
        },
    )
}

/// The kernel's (or the OS's) errno in `e`, if it carries one.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<KernelError>())
            .map(|k| k.errno)
    })
}

/// Whether `e` is the kernel's (or the OS's) `errno`.
pub fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<KernelError>())
            .is_some_and(|k| k.errno == errno)
}

impl Netlink {
    /// `protocol`: [`netlink_sys::constants::NETLINK_ROUTE`] or `NETLINK_NETFILTER`.
    pub fn open(protocol: isize) -> io::Result<Netlink> {
        let mut sock = Socket::new(protocol)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        set_receive_timeout(&sock, RECEIVE_TIMEOUT)?;
        // Errors carry the kernel's extended message (e.g. which attribute it refused).
        let _ = sock.set_ext_ack(true);
        Ok(Netlink { sock, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `messages` in one datagram, each asking for an ack, and waits for every answer.
    /// `framing` wraps the batch (nf_tables' batch begin/end), which is not acked. The first
    /// kernel error is returned, named by `describe(index)`.
    pub fn transact<T>(
        &mut self,
        messages: Vec<(T, u16)>,
        framing: Option<(T, T)>,
        describe: &dyn Fn(usize) -> String,
    ) -> io::Result<()>
    where
        T: Message,
    {
        let mut buf = Vec::new();
        let mut seqs = Vec::with_capacity(messages.len());
        // The batch's framing is never acked, but the kernel does answer it with an error (no
        // nf_tables in this kernel, no permission): that ends the wait too.
        let mut framing_seqs = Vec::new();
        let (begin, end) = match framing {
            Some((b, e)) => (Some(b), Some(e)),
            None => (None, None),
        };
        if let Some(b) = begin {
            let seq = self.next_seq();
            framing_seqs.push(seq);
            emit(&mut buf, b, NLM_F_REQUEST, seq);
        }
        for (msg, flags) in messages {
            let seq = self.next_seq();
            seqs.push(seq);
            emit(&mut buf, msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        }
        if let Some(e) = end {
            let seq = self.next_seq();
            framing_seqs.push(seq);
            emit(&mut buf, e, NLM_F_REQUEST, seq);
        }
        // The kernel refuses a datagram larger than the socket's send buffer (EMSGSIZE): a table
        // with a thousand VIPs is ~1 MB. Grow both buffers to fit the batch and its acks, as nft
        // does (SO_*BUFFORCE: root may pass rmem_max/wmem_max).
        fit_buffers(&self.sock, buf.len(), seqs.len());
        self.sock.send(&buf, 0)?;
        let mut pending = seqs.len();
        let mut first_error: Option<io::Error> = None;
        while pending > 0 {
            let (data, _) = self.sock.recv_from_full().map_err(timed_out)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<T>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                let seq = msg.header.sequence_number;
                if let NetlinkPayload::Error(err) = msg.payload {
                    if framing_seqs.contains(&seq) {
                        if let Some(code) = err.code {
                            return Err(kernel_error(code.get(), "starting or ending a batch"));
                        }
                    } else if let Some(index) = seqs.iter().position(|s| *s == seq) {
                        pending -= 1;
                        if let Some(code) = err.code {
                            if first_error.is_none() {
                                first_error = Some(kernel_error(code.get(), &describe(index)));
                            }
                        }
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One request, acked.
    pub fn request<T>(&mut self, msg: T, flags: u16, what: &str) -> io::Result<()>
    where
        T: Message,
    {
        self.transact(vec![(msg, flags)], None, &|_| what.to_string())
    }

    /// One request answered by one message (a GET of one object); `None` if the kernel only acks.
    pub fn get<T>(&mut self, msg: T, what: &str) -> io::Result<Option<T>>
    where
        T: Message,
    {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        emit(&mut buf, msg, NLM_F_REQUEST, seq);
        self.sock.send(&buf, 0)?;
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(timed_out)?;
            let msg = NetlinkMessage::<T>::deserialize(&data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if msg.header.sequence_number != seq {
                continue;
            }
            return match msg.payload {
                NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
                NetlinkPayload::Error(err) => match err.code {
                    Some(code) => Err(kernel_error(code.get(), what)),
                    None => Ok(None),
                },
                _ => Ok(None),
            };
        }
    }

    /// A dump request: every message the kernel answers with, until `NLMSG_DONE`.
    pub fn dump<T>(&mut self, msg: T, what: &str) -> io::Result<Vec<T>>
    where
        T: Message,
    {
        let seq = self.next_seq();
        let mut buf = Vec::new();
        emit(&mut buf, msg, NLM_F_REQUEST | NLM_F_DUMP, seq);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(timed_out)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<T>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    match msg.payload {
                        // A dump that failed part way ends with its error in the DONE
                        // message (generic netlink families such as WireGuard's do).
                        NetlinkPayload::Done(done) if done.code < 0 => {
                            return Err(kernel_error(done.code, what));
                        }
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(err) => {
                            if let Some(code) = err.code {
                                return Err(kernel_error(code.get(), what));
                            }
                            return Ok(out);
                        }
                        NetlinkPayload::InnerMessage(inner) => out.push(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    return Ok(out);
                }
                offset += (len + 3) & !3;
            }
        }
    }
}

/// A receive timeout, worded.
/// Raises the socket's send buffer to hold `bytes` and its receive buffer to hold `acks` acks
/// (best effort: a refusal shows as the send's own error).
fn fit_buffers(sock: &Socket, bytes: usize, acks: usize) {
    use std::os::fd::AsRawFd;
    // The kernel doubles what it is given and keeps some for itself; ask for a margin.
    const DEFAULT: usize = 212_992;
    let set = |force: libc::c_int, plain: libc::c_int, want: usize| {
        if want <= DEFAULT {
            return;
        }
        let v = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
        for opt in [force, plain] {
            // SAFETY: a plain int option on a socket we own.
            let r = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                return;
            }
        }
    };
    set(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes + 4096);
    // An ack is ~36 bytes, but each is its own skb, and the buffer counts an skb's true size
    // (~1 KB here): a thousand rules overflow the default 208 KB with ENOBUFS.
    set(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, acks * 1024 + 4096);
}

fn timed_out(e: io::Error) -> io::Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the kernel did not answer a netlink request within {RECEIVE_TIMEOUT:?}"),
        )
    } else {
        e
    }
}

fn emit<T: Message>(buf: &mut Vec<u8>, inner: T, flags: u16, seq: u32) {
    let mut msg = NetlinkMessage::from(inner);
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg.finalize();
    let start = buf.len();
    buf.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut buf[start..]);
}
