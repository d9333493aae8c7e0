//! `agent daemon`: the long-lived process that owns `/var/lib/compose-fleet` and answers protocol
//! requests on a unix socket (`/run/compose-fleet/agent.sock`). One per host, guaranteed by an
//! exclusive `flock` on `agent.lock`; `agent rpc` connects to it (and starts it when needed).
//!
//! Each connection is a sequence of request lines under the protocol's rules
//! ([`crate::proto::ServerConnection`]): `hello` first and answered before anything else is read;
//! a version mismatch, a request before `hello`, a line that does not parse or is too long is
//! answered with one error frame and the connection is closed. After the handshake each request
//! is answered by [`dispatch`] in its own task, so a streaming request (logs, exec) does not block
//! the others. `dispatch` is the seam where the supervisor plugs in
//! `Apply`/`Status`/`Logs`/`Exec`/`Remove`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::proto::{
    AgentError, ErrorKind, LineBuffer, LineTooLong, Request, RequestFrame, Response, ResponseFrame,
    ServerConnection, Step,
};
use crate::store::{write_atomic, Paths};

/// What every request handler can reach.
pub struct Context {
    pub paths: Paths,
    /// Serves everything but `Hello`; the error says why it could not be opened (the daemon
    /// still starts and answers `Hello`: it never refuses to start because of its state).
    pub supervisor: Result<crate::supervisor::Supervisor, String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("paths", &self.paths)
            .field("supervisor", &self.supervisor.as_ref().map(|_| "open"))
            .finish()
    }
}

/// The replies to one request. Streams send [`Replies::more`] frames, then exactly one final
/// [`Replies::ok`] or [`Replies::err`] (which consume the handle).
#[derive(Debug, Clone)]
pub struct Replies {
    id: u64,
    tx: mpsc::Sender<Outgoing>,
}

impl Replies {
    /// One more reply of a stream. Returns false once the client is gone (stop streaming).
    pub async fn more(&self, response: Response) -> bool {
        let mut frame = ResponseFrame::ok(self.id, response);
        frame.more = true;
        self.tx.send(Outgoing::Frame(frame)).await.is_ok()
    }

    pub async fn ok(self, response: Response) {
        let _ = self
            .tx
            .send(Outgoing::Frame(ResponseFrame::ok(self.id, response)))
            .await;
    }

    pub async fn err(self, error: AgentError) {
        let _ = self
            .tx
            .send(Outgoing::Frame(ResponseFrame::err(self.id, error)))
            .await;
    }
}

/// Another daemon holds the lock: not an error for `agent rpc`, which then just connects.
#[derive(Debug)]
pub struct AlreadyRunning;

/// Runs the daemon until SIGTERM/SIGINT. Returns `Ok(Err(AlreadyRunning))` when another daemon
/// holds the lock.
pub async fn run(paths: Paths) -> io::Result<Result<(), AlreadyRunning>> {
    std::fs::create_dir_all(&paths.run).map_err(|e| with_path(e, &paths.run))?;
    std::fs::create_dir_all(&paths.state).map_err(|e| with_path(e, &paths.state))?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock())
        .map_err(|e| with_path(e, &paths.lock()))?;
    // Held (and released by the kernel when we exit) for the daemon's whole life.
    let _lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(Err(AlreadyRunning)),
            Err((_, e)) => return Err(with_path(e.into(), &paths.lock())),
        };
    write_atomic(
        &paths.pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )?;
    // We hold the lock, so a socket file left here is stale (a crashed daemon).
    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| with_path(e, &socket))?;
    // Only root (the SSH user that runs `agent rpc`) may talk to the daemon.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    eprintln!(
        "compose-fleet-agent {} daemon: listening on {} (pid {})",
        crate::AGENT_VERSION,
        socket.display(),
        std::process::id()
    );

    // Re-adopts the shims of containers that kept running while no daemon did.
    let supervisor = crate::wiring::open_supervisor(&paths).await.map_err(|e| {
        eprintln!("daemon: cannot supervise pods: {e}");
        e.to_string()
    });
    let ctx = Arc::new(Context { paths, supervisor });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(serve(ctx.clone(), stream)); }
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("daemon: stopping");
    let _ = std::fs::remove_file(ctx.paths.pid_file());
    Ok(Ok(()))
}

fn with_path(e: io::Error, path: &std::path::Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// How long a new connection may take to say `hello`. The CLI sends it at once; a peer that
/// says nothing holds a connection (and a task) for no more than this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the writer task sends: a reply, or the last frame before the connection closes.
#[derive(Debug)]
enum Outgoing {
    Frame(ResponseFrame),
    Last(ResponseFrame),
}

/// Serves one connection under the rules of [`ServerConnection`]: request lines in, reply lines
/// out, until the client closes its side and every request has had its final reply — or until a
/// rule is broken, when the error frame is the last thing written and the connection closes (the
/// requests still running lose their connection, which cancels streams).
async fn serve(ctx: Arc<Context>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let (frame, last) = match out {
                Outgoing::Frame(f) => (f, false),
                Outgoing::Last(f) => (f, true),
            };
            let mut line = frame.to_line();
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() || last {
                break;
            }
        }
        let _ = write.shutdown().await;
    });

    let mut conn = ServerConnection::new(crate::AGENT_VERSION);
    let mut reader = BufReader::new(read);
    let mut lines = LineBuffer::new(conn.max_line_bytes());
    loop {
        lines.set_max(conn.max_line_bytes());
        let read = if conn.is_ready() {
            read_line(&mut reader, &mut lines).await
        } else {
            match tokio::time::timeout(HELLO_TIMEOUT, read_line(&mut reader, &mut lines)).await {
                Ok(read) => read,
                Err(_) => Ok(Read::HelloTimeout),
            }
        };
        let step = match read {
            Ok(Read::Line(line)) => conn.on_line(&line),
            Ok(Read::TooLong(e)) => conn.on_line_too_long(e),
            Ok(Read::HelloTimeout) => conn.on_hello_timeout(HELLO_TIMEOUT),
            // The client is gone (EOF or a broken socket): finish what was asked.
            Ok(Read::Eof) | Err(_) => break,
        };
        match step {
            Step::Skip => {}
            // Answered before the next line is read: nothing is served before the handshake.
            Step::Hello { id } => {
                let replies = Replies { id, tx: tx.clone() };
                hello(&ctx, replies).await;
            }
            Step::Serve(frame) => {
                let replies = Replies {
                    id: frame.id,
                    tx: tx.clone(),
                };
                tokio::spawn(dispatch(ctx.clone(), frame.request, replies));
            }
            Step::Close(frame) => {
                if let Some(err) = &frame.err {
                    eprintln!("daemon: closing a connection: {err}");
                }
                let _ = tx.send(Outgoing::Last(frame)).await;
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One read from a connection.
#[derive(Debug)]
enum Read {
    Line(Vec<u8>),
    TooLong(LineTooLong),
    HelloTimeout,
    Eof,
}

/// Reads one line through `lines` (which refuses an over-long line before buffering it).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    lines: &mut LineBuffer,
) -> io::Result<Read> {
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(lines.finish().map_or(Read::Eof, Read::Line));
        }
        match lines.feed(buf) {
            Ok((used, line)) => {
                reader.consume(used);
                if let Some(line) = line {
                    return Ok(Read::Line(line));
                }
            }
            Err(e) => return Ok(Read::TooLong(e)),
        }
    }
}

/// Answers one request. **The seam**: the supervisor's requests are wired in here, one arm each.
pub async fn dispatch(ctx: Arc<Context>, request: Request, replies: Replies) {
    match request {
        // The connection answers `hello` itself (`serve`); one that arrives here was not first.
        Request::Hello { .. } => {
            replies
                .err(AgentError {
                    kind: ErrorKind::Protocol,
                    message: "`hello` is answered once, first, by the connection".into(),
                    causes: vec![],
                })
                .await
        }
        request => supervise(&ctx, request, replies).await,
    }
}

/// `Apply`, `Status`, `Logs`, `Exec`, `Remove`: the supervisor's, its frames forwarded as they
/// come (the last one has `more: false`).
async fn supervise(ctx: &Context, request: Request, replies: Replies) {
    let supervisor = match &ctx.supervisor {
        Ok(s) => s,
        Err(why) => {
            return replies
                .err(AgentError {
                    kind: ErrorKind::Host,
                    message: "this agent could not open its pod supervisor".into(),
                    causes: vec![why.clone()],
                })
                .await
        }
    };
    let mut frames = supervisor.handle(RequestFrame {
        id: replies.id,
        request,
    });
    while let Some(frame) = frames.recv().await {
        if replies.tx.send(Outgoing::Frame(frame)).await.is_err() {
            // The client is gone: dropping `frames` cancels a stream.
            break;
        }
    }
}

/// The answer to a `hello` whose version matches ([`ServerConnection`] checked it): the facts.
async fn hello(ctx: &Context, replies: Replies) {
    let state = ctx.paths.state.clone();
    // Reading /proc and statvfs may block briefly; keep it off the reactor.
    match tokio::task::spawn_blocking(move || crate::facts::collect(&state)).await {
        Ok(facts) => replies.ok(Response::Hello(facts)).await,
        Err(e) => {
            replies
                .err(AgentError {
                    kind: ErrorKind::Host,
                    message: "collecting host facts failed".into(),
                    causes: vec![e.to_string()],
                })
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MAX_LINE_BYTES;

    #[tokio::test]
    async fn lines_longer_than_the_limit_are_refused() {
        let data = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut reader = BufReader::new(&data[..]);
        let mut lines = LineBuffer::new(MAX_LINE_BYTES);
        assert!(matches!(
            read_line(&mut reader, &mut lines).await,
            Ok(Read::TooLong(_))
        ));
    }

    #[tokio::test]
    async fn reads_lines_one_at_a_time() {
        let data = b"{\"a\":1}\n{\"b\":2}\nrest";
        let mut reader = BufReader::new(&data[..]);
        let mut lines = LineBuffer::new(100);
        let mut got = Vec::new();
        loop {
            match read_line(&mut reader, &mut lines).await {
                Ok(Read::Line(l)) => got.push(String::from_utf8(l).unwrap()),
                Ok(Read::Eof) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "rest"]);
    }
}
